"""Generated gRPC and protobuf code for the voxwire.v1 API (``make proto``); do not edit the *_pb2* files."""
