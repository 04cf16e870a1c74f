"""What is trained: the backbone registry (`backbones`) and the method registry with its
hyperparameters and search space (`methods`)."""
