"""Built-in plugin ee_tta: test-time augmentation views and streaming prediction."""
