"""The method's maths as pure torch functions and modules: wavelet transform, DISW, losses, adapters, gradient
diagnostics and schedules. Nothing here imports Ultralytics (a test checks it)."""
