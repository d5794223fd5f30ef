"""The networks: the family contract, the registry, DC-CNN, the cascaded U-Net and the SFT network."""
