"""On a phantom-trained tiny ViT, rollout and gradient rollout put more heatmap mass in the lesion than chance."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_rollouts_of_a_phantom_trained_vit_put_more_mass_in_the_lesion_than_its_area(tmp_path):
    from popevit.config import load_config
    from popevit.data.phantoms import synthesize
    from popevit.explain import explain_run
    from popevit.training import train

    data = synthesize(tmp_path / "phantoms", per_class=400, size=64, seed=5)
    cfg = load_config(
        None,
        [
            f"data.data={data}",
            "data.preprocess.img_size=64",
            "data.batch_size=32",
            "data.classes=[glioma,meningioma,notumor]",
            "model.name=vit_p8_w64_d4_conv",
            "model.pos_enc=pope",
            "optim.lr=2e-3",
            "optim.warmup_epochs=1",
            "train.max_epochs=10",
            "train.patience=null",
            "train.progress_bar=false",
            "train.threads=2",
        ],
    )
    result = train(cfg, tmp_path / "run")
    assert result.val_metrics["val/acc"] > 0.5, (  # chance is 1/3
        f"the phantom model did not learn (val acc {result.val_metrics['val/acc']:.2f}): its maps explain a shortcut, "
        "not the lesions"
    )
    out = tmp_path / "explain"
    explain_run(tmp_path / "run", split="test", method="rollout,grad-rollout", out=out, faithfulness=True,
                max_images=40, steps=10)  # fmt: skip
    f = json.loads((out / "faithfulness.json").read_text())
    mask = f["mask"]
    assert mask is not None and mask["images"] >= 10
    for method in ("rollout", "grad-rollout"):
        assert mask["methods"][method]["mass_share"] > mask["area_fraction"], (method, mask)
