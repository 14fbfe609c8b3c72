"""`voxq-ws`: voxq's own small streaming protocol, for self-hosted recognizers."""
