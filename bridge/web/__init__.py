"""The HTTP API and the reference owner page (`bridge api`); the only package importing
FastAPI, and (in :mod:`.server`) uvicorn.

- :mod:`.app`: the application, wired (:func:`create_app`);
- :mod:`.guard`: before any route: body size limit, token before body, security headers;
- :mod:`.context`: who is asking, and the Admin acting for them;
- :mod:`.refusals`: a refusal as an HTTP answer (status, body, headers);
- :mod:`.bodies`, :mod:`.params`: request and response bodies, path and query parameters;
- :mod:`.links`: the OpenAPI links from one answer to the next request;
- :mod:`.routes`: one module per resource, each a thin layer over Admin;
- :mod:`.server`: serving the application with uvicorn until stopped;
- ``static/``: the owner page's files.
"""
