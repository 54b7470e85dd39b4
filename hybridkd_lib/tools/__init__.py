"""Floor 6: tools over trained runs and training steps: the bench and its convolution floor (Fig. 4), Grad-CAM
(Fig. A), the NIR export checked in a reader, and the defaults the command line shows for them."""
