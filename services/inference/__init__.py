"""Inference: the ``Inference`` port (ports), the wire contract shared with Triton's python backends
(contract), and its backends: Triton (triton), in-process torch (torch_local), both (auto), chosen by
settings (factory).

Import the modules themselves; this package imports nothing, so the Triton python-backend stub can import
``services.inference.contract`` without grpc, tritonclient or torch.
"""
