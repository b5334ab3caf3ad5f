import torch, json
from pathlib import Path
from popevit.config import load_config
from popevit.data.datamodule import MRIDataModule
from popevit.models import create_model
from sklearn.metrics import roc_auc_score
torch.set_num_threads(2)
run = Path("runs/gap/pilot/recipe-s0")
cfg = load_config(run / "config.yaml")
dm = MRIDataModule(cfg.data, run / "manifest.csv", seed=0); dm.setup("fit")
meta = json.loads((run / "model.json").read_text())
ck = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
for key in ("state_dict", "current_model_state"):
    m = create_model(meta["model"]["name"], **meta["model"]["kwargs"]).eval()
    m.load_state_dict({k[6:]: v for k, v in ck[key].items() if k.startswith("model.")})
    P, Y = [], []
    with torch.no_grad():
        for x, y in dm.val_dataloader():
            P.append(m(x).softmax(-1)); Y.append(y)
    P, Y = torch.cat(P), torch.cat(Y)
    print(key, "acc", (P.argmax(-1) == Y).float().mean().item(), "auroc", roc_auc_score(Y, P, multi_class="ovr"), "pred counts", torch.bincount(P.argmax(-1), minlength=4).tolist(), flush=True)
