"""File inputs that take uploads only.

Given a file value whose path is an http(s) URL (the API accepts any FileData), Gradio 6 downloads it
before the handler runs: Blocks.preprocess_data -> processing_utils.async_move_files_to_cache ->
Block.async_move_resource_to_block_cache -> processing_utils.async_ssrf_protected_download, which refuses
private addresses but fetches any public host. The page itself always uploads the file first (to
/gradio_api/upload) and sends the stored path, which Gradio checks is in its upload folder. So a URL is
refused before anything is fetched. The guard is set on the component instance: a gr.File subclass would
make Gradio write a type stub next to this module at import.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from gradio_client.utils import is_http_url_like

URL_REFUSED = "only a file uploaded from your computer is accepted here, not a URL"


def accept_uploads_only(component: gr.File) -> gr.File:
    """`component`, made to refuse a URL given as its file's path (one clear error, nothing downloaded)."""
    move, move_async = component.move_resource_to_block_cache, component.async_move_resource_to_block_cache

    def guarded(url_or_file_path: str | Path | None) -> str | None:
        _refuse_url(url_or_file_path)
        return move(url_or_file_path)

    async def guarded_async(url_or_file_path: str | Path | None) -> str | None:
        _refuse_url(url_or_file_path)
        return await move_async(url_or_file_path)

    component.move_resource_to_block_cache = guarded  # type: ignore[method-assign]
    component.async_move_resource_to_block_cache = guarded_async  # type: ignore[method-assign]
    return component


def _refuse_url(value: str | Path | None) -> None:
    if isinstance(value, str) and is_http_url_like(value.strip()):
        raise gr.Error(URL_REFUSED)
