"""The one output filter for a peer's output: ``filter`` (the MIME allow-list, display
metadata, stream text) over ``sanitize`` (nh3 and the HTML, Markdown, SVG and LaTeX
rules). Above core, used by ipython/ and kernel/ only, so that a connection, a server or a
client script never loads nh3."""
