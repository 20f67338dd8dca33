"""Tests of the site side of federated training: model files, trainers, PyTorch adapter, data."""
