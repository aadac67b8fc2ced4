"""What users run around distillation: data preparation, sliced prediction, the band visualiser, student yamls,
synthetic scenes, the demo, and the edge pipeline (prune, quantize, latency, compress)."""
