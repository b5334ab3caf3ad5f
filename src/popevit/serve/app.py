"""``popevit serve``: a local web app (Gradio) to try a run on one image, DICOM or NIfTI file.

Drop a file and see, side by side, the slice as read and the explanation overlay (original | model input | heatmap,
from :mod:`popevit.explain`), the class probabilities and the out-of-distribution flag; the model card is one tab
away. Volumes (NIfTI, DICOM multi-frame) are predicted slice by slice; the slice shown is the most confident tumour
slice among those the OOD flag trusts, with the per-volume summary below it.

Offline by construction: Gradio's analytics are switched off before it is imported, the theme uses local fonts,
there is no share link, no footer links to the internet, and the server binds to 127.0.0.1 unless told otherwise.
Every prediction goes through :class:`popevit.serve.predict.Predictor`, the code of ``popevit predict``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
OFFLINE_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "GRADIO_SHARE": "False",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
ELEMENT_IDS = {
    "upload": "popevit-upload",
    "status": "popevit-status",
    "input": "popevit-input",
    "overlay": "popevit-overlay",
    "probabilities": "popevit-probabilities",
    "summary": "popevit-summary",
    "card": "popevit-card",
}


def _offline_env() -> None:
    """Switch off every call home Gradio and the Hugging Face hub would make (set before gradio is imported)."""
    os.environ.update(OFFLINE_ENV)


def display_png(slice_image: Any, path: Path) -> Path:
    """The slice as read (any PIL mode), windowed at its 0.5/99.5 percentiles, as an 8-bit PNG."""
    from PIL import Image

    from popevit.data.decode import to_gray

    gray = to_gray(slice_image)
    lo, hi = np.percentile(gray, (0.5, 99.5))
    scaled = np.clip((gray - lo) / max(float(hi - lo), 1e-6), 0, 1) * 255
    Image.fromarray(scaled.round().astype(np.uint8)).save(path)
    return path


class ServeSession:
    """The model behind the app: one :class:`Predictor` with an explanation method, and a scratch folder."""

    def __init__(self, run_dir: str | Path, *, device: str | None = None, explain: str | None = None) -> None:
        from popevit.explain.methods import methods_for
        from popevit.serve.card import CARD_MD, write_model_card
        from popevit.serve.predict import Predictor

        run_dir = Path(run_dir)
        self.run_dir = run_dir
        self.predictor = Predictor(run_dir, device=device, echo=print)
        if explain is None:
            explain = "rollout" if "rollout" in methods_for(self.predictor.backend.model) else "gradcam"
        self.predictor.use_explanation(explain)
        self.scratch = Path(tempfile.mkdtemp(prefix="popevit-serve-"))  # overlays of this session, removed at exit
        atexit.register(shutil.rmtree, self.scratch, True)
        self.counter = 0
        if not (run_dir / CARD_MD).is_file():
            write_model_card(run_dir)
        card = run_dir / CARD_MD
        self.card = card.read_text() if card.is_file() else "No model card could be written for this run."

    def analyse(self, path: str | None) -> dict[str, Any]:
        """Everything the page shows for one uploaded file (see :func:`build_app`)."""
        from popevit.data.preprocess import preprocess_image
        from popevit.serve.inputs import Failure, Slice, iter_inputs
        from popevit.serve.predict import summarize_volumes

        if not path:
            return {
                "status": "Upload an image, DICOM or NIfTI file.",
                "input": None,
                "overlay": None,
                "probabilities": None,
                "summary": "",
            }
        name = Path(path).name
        cfg = self.predictor.info.preprocess
        slices: list[Slice] = []
        errors: list[str] = []
        for item in iter_inputs([path], cfg, "all"):
            if isinstance(item, Failure):
                errors.append(item.reason)
            elif isinstance(item, Slice):
                slices.append(item)
        pairs = []
        for s in slices:
            try:
                pairs.append((s, preprocess_image(s.image, cfg)))
            except Exception as err:  # a degenerate slice: shown as an error, the others still count
                errors.append(f"preprocessing failed ({type(err).__name__}: {err})")
        if not pairs:
            reason = errors[0] if errors else "no slice found in the file"
            return {
                "status": f"**Error:** `{name}`: {reason}",
                "input": None,
                "overlay": None,
                "probabilities": None,
                "summary": "",
            }
        out = self.predictor.predict_arrays(np.stack([a for _, a in pairs]))
        records = self.predictor.records(pairs, out)
        volumes = summarize_volumes(records, self.predictor.classes)
        shown = 0
        if volumes:
            best_id = volumes[0]["most_confident_tumour_slice"]["id"]
            shown = next(i for i, r in enumerate(records) if r["id"] == best_id)
        self.counter += 1
        stem = self.scratch / f"{self.counter:05d}"
        overlay = self.predictor.save_overlays([pairs[shown]], out["proba"][shown : shown + 1], [Path(f"{stem}_x.png")])
        shown_input = display_png(pairs[shown][0].image, Path(f"{stem}_in.png"))
        r = records[shown]
        where = f" (slice {r['index']} of {r['n_slices']})" if r["index"] is not None else ""
        if r["ood"]:
            flag = (
                f"**Out of distribution** ({' and '.join(r['flagged_by'])} score above its threshold): this image "
                "is unlike the model's training data, so do not trust the prediction."
            )
        elif self.predictor.info.ood is None:
            flag = f"OOD flag unavailable: {self.predictor.info.ood_note}"
        else:
            flag = "In distribution: the OOD flag does not object to this image."
        status = f"`{name}`{where}: **{r['predicted']}** ({r['probability']:.3f}). {flag}"
        if errors:
            status += f" ({len(errors)} slices could not be read: {errors[0]})"
        summary = ""
        if volumes:
            v = volumes[0]
            per_class = ", ".join(
                f"{c} {m['probability']:.3f} (slice {m['index']})" for c, m in v["max_per_class"].items()
            )
            summary = (
                f"Volume: {v['n_predicted']} slices predicted, {v['n_ood']} flagged out of distribution; "
                f"predicted {v['predicted_counts']}. Maximum per class: {per_class}."
            )
        return {
            "status": status,
            "input": str(shown_input),
            "overlay": str(overlay[0]),
            "probabilities": r["probabilities"],
            "summary": summary,
        }


def build_app(session: ServeSession) -> Any:
    """The Gradio Blocks of the app (not launched)."""
    _offline_env()
    import gradio as gr

    info = session.predictor.info
    title = f"popevit: {session.run_dir.name} ({info.name})"
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(
            f"## {title}\nClasses: {', '.join(info.classes)}. **A research tool, not for diagnosis.** "
            "Drop a PNG/JPEG/TIFF image, a DICOM file or a NIfTI volume."
        )
        with gr.Tab("Predict"):
            upload = gr.File(label="image, DICOM or NIfTI file", type="filepath", elem_id=ELEMENT_IDS["upload"])
            status = gr.Markdown(elem_id=ELEMENT_IDS["status"])
            with gr.Row():
                shown = gr.Image(label="input", type="filepath", elem_id=ELEMENT_IDS["input"], interactive=False)
                overlay = gr.Image(
                    label=f"explanation ({session.predictor.explain})",
                    type="filepath",
                    elem_id=ELEMENT_IDS["overlay"],
                    interactive=False,
                )
            probabilities = gr.Label(
                label="class probabilities", num_top_classes=len(info.classes), elem_id=ELEMENT_IDS["probabilities"]
            )
            summary = gr.Markdown(elem_id=ELEMENT_IDS["summary"])
        with gr.Tab("Model card"):
            gr.Markdown(session.card, elem_id=ELEMENT_IDS["card"])

        def run(path: str | None):
            r = session.analyse(path)
            return r["status"], r["input"], r["overlay"], r["probabilities"], r["summary"]

        upload.upload(run, inputs=upload, outputs=[status, shown, overlay, probabilities, summary])
        upload.clear(run, inputs=upload, outputs=[status, shown, overlay, probabilities, summary])
    return app


def serve(
    run_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str | None = None,
    explain: str | None = None,
    echo=print,
) -> None:
    """Start the app and block until interrupted.

    Args:
        run_dir: a finished run.
        host: interface to bind; 127.0.0.1 (this machine only) unless told otherwise.
        port: TCP port.
        device: torch device.
        explain: explanation method (default: rollout for ViTs, Grad-CAM for CNNs).
        echo: status lines.
    """
    _offline_env()
    session = ServeSession(run_dir, device=device, explain=explain)
    app = build_app(session)
    import gradio as gr

    if host not in LOCAL_HOSTS:
        echo(f"warning: binding to {host}: other machines on the network can reach this app (no authentication)")
    echo(f"serving {run_dir} at http://{'127.0.0.1' if host in LOCAL_HOSTS else host}:{port} (Ctrl+C stops it)")
    app.queue(default_concurrency_limit=1).launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        show_error=False,
        quiet=True,
        footer_links=[],
        enable_monitoring=False,
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        theme=gr.themes.Default(
            font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
        ),
        allowed_paths=[str(session.scratch)],
    )
