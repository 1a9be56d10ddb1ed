"""`orchestrator ui`: a web page on 127.0.0.1 over the runs of the state folder (`server`)."""
