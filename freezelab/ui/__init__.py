"""The Gradio dashboard. Only this package imports gradio, and only its layout modules do:
`handlers`, `tree_view`, `memory_view` and the other view modules are plain Python,
so they can be tested and timed without a server. `create_app` lives in
`freezelab.ui.blocks` (importing this package does not import gradio)."""
