"""The web chat page's static files (index.html, chat.css, chat.js), served by app.api.routes.web."""
