"""generatect-kedro: GenerateCT as a Kedro project (ingestion → CT-ViT → MaskGIT → super-resolution)."""

__version__ = "0.1.0"
