"""Using a trained model: the weights file, a model with its test data, predictions on pictures (one image
reader), Grad-CAM, and the app with its sample of test images and its response time."""
