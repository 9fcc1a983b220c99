"""Model side: the request (torch-free), its sources, weights, preprocessing, class names, layers
and loading; splitting at the target layer; ONNX and TensorRT building. Import the modules
themselves (``fdpipe.export.loading``, ...): this package imports nothing, so that the request
stays torch-free. The public names are ``fdpipe``'s."""
