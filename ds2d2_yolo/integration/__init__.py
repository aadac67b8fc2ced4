"""Everything that touches Ultralytics' internals: head hooks and decoding, the teacher, the amplifier, the training
wrapper, the cross-head probe, the pseudo-label set and the trainer."""
