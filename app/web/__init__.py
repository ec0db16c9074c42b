"""The web pages' static files (index.html and console.html, their CSS and scripts), served by app.api.routes.web."""
