"""Using a trained model: predict on new images and volumes, export it, describe it, serve it in a browser.

- :mod:`popevit.serve.inputs`: images, DICOM files and series, NIfTI volumes -> 2-D slices (torch-free);
- :mod:`popevit.serve.module`: the served graph, eval transform + model + OOD scores (``ServingModule``);
- :mod:`popevit.serve.ood`: the out-of-distribution flag and its fit on the run's own data;
- :mod:`popevit.serve.predict`: ``popevit predict`` with a run folder (PyTorch) or an exported file (onnxruntime);
- :mod:`popevit.serve.export`: ``popevit export`` to ONNX or torch.export, checked against PyTorch;
- :mod:`popevit.serve.card`: ``MODEL_CARD.md`` and ``model_card.json``, kept by ``train`` and ``evaluate``;
- :mod:`popevit.serve.app`: ``popevit serve``, a local Gradio app.

Nothing is imported here, so that the ONNX path (inputs, predict) never pulls in torch.
"""
