"""Reading CT images, orientation handling and atomic writing of outputs."""
