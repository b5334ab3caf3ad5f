"""Training overrides that make a sweep trial take about a second."""

TINY = [
    "model.name=vit_p8_w32_d2",
    "data.preprocess.img_size=32",
    "data.batch_size=8",
    "train.max_epochs=1",
    "train.progress_bar=false",
    "train.threads=1",
    "optim.warmup_epochs=0",
]
