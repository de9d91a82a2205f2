"""Networks: ResNet backbones with a chosen output stride, the CAM classifier and the DeepLab segmenter."""
