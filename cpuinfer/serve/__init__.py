"""`cpuinfer serve`: an OpenAI-compatible HTTP server over one shared model.

    requests.py   request bodies -> validated requests, or an ApiError (status + OpenAI's error body)
    json_mode.py  an incremental JSON checker that constrains sampling for response_format json_object
    scheduler.py  the thread that owns the model: admits requests, batches their decode steps
    bodies.py     OpenAI's response and stream-chunk bodies
    app.py        the Starlette routes: auth, errors, server-sent events
"""
