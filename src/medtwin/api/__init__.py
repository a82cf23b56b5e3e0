"""The medtwin service: a FastAPI app, one router per resource (see ``app.create_app``)."""
