"""The only package that imports grpc and voxwire.v1: servicers, pb ↔ domain, the status table."""
