"""Real time: MQTT ingestion of device readings into the store, and the twin-sync loop."""
