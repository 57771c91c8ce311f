"""Models: encoders, the MANN, sequence baselines, the transformer, backbones."""
