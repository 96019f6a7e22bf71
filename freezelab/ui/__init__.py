"""The Gradio dashboard. Only this package imports gradio, and only its `*_panel` modules,
`shared`, `style` and `blocks` do: `handlers` (the events), `registry` (components by id) and the
`*_view` modules (what each panel shows) are plain Python, so they can be tested and timed
without a server. `create_app` lives in `freezelab.ui.blocks` (importing this package does
not import gradio)."""
