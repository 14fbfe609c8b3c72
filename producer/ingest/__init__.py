"""The WebSocket ingest gateway (`voxq ingest`): call platforms and plain clients stream audio
straight into sessions. One module per dialect (a pure protocol part and a connection handler),
a shared core that publishes through `producer.publisher.Publisher`."""
