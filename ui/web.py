"""A small Gradio web app over the gateway: chat with streaming, uploads with live progress, documents.

``python -m ui.web`` serves it on ``UI_HOST:UI_PORT`` (127.0.0.1:7860) against the gateway at
``GATEWAY_ADDR`` (127.0.0.1:50051). The handlers live in :class:`Handlers` so tests can drive
them without a browser; :func:`build_app` only wires them to components.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from ragchat.v1 import common_pb2

from services.common.config import ConfigError, Env
from services.common.logging import setup_logging
from ui.client import DEFAULT_GATEWAY, GatewayClient, GatewayError, chat_options, default_user
from ui.format import excerpt, page_text, progress_text, status_word

log = logging.getLogger(__name__)

ClientFactory = Callable[[str], GatewayClient]
Message = dict[str, Any]
DOCUMENT_HEADERS = ["Title", "Status", "Pages", "Chunks", "Doc ID", "Source"]

_MD_SPECIAL = str.maketrans({ch: "\\" + ch for ch in "\\`*_{}[]<>()#+-.!|"})


def md(text: str) -> str:
    """Text shown literally inside Markdown."""
    return text.translate(_MD_SPECIAL)


class ClientPool:
    """One gateway client per user id, created on first use (the default client factory)."""

    def __init__(self, target: str, token: str | None = None) -> None:
        self._target = target
        self._token = token
        self._clients: dict[str, GatewayClient] = {}

    def __call__(self, user: str) -> GatewayClient:
        client = self._clients.get(user)
        if client is None:
            client = GatewayClient(self._target, user=user, token=self._token)
            self._clients[user] = client
        return client

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()


def references_markdown(passages: Sequence[common_pb2.Passage]) -> str:
    """Each reference: title, page and score, then the passage as a quote."""
    blocks = []
    for n, passage in enumerate(passages, start=1):
        n = passage.citation or n  # the [n] the answer uses for it, when it marks citations
        title = passage.title or passage.source or passage.doc_id
        blocks.append(
            f"**{n}. {md(title)}** · {page_text(passage.page)} · score {passage.score:.3f}\n\n"
            f"> {md(excerpt(passage.text, 600))}"
        )
    return "\n\n".join(blocks)


def error_text(error: GatewayError) -> str:
    return f"⚠️ {error.message}"


@dataclass
class Handlers:
    """The app's behaviour, independent of Gradio's components."""

    client_factory: ClientFactory

    def _client(self, user: str) -> GatewayClient:
        user = (user or "").strip()
        if not user:
            raise GatewayError("INVALID_ARGUMENT", "enter a user id first")
        return self.client_factory(user)

    async def chat(
        self,
        question: str,
        history: list[Message] | None,
        conversation_id: str,
        user: str,
        use_documents: bool = True,
        show_references: bool = True,
    ) -> AsyncIterator[tuple[list[Message], str, str]]:
        """Stream one turn: yields (chat history, conversation id, question box) as the answer grows."""
        messages = list(history or [])
        question = (question or "").strip()
        if not question:
            yield _snapshot(messages), conversation_id, ""
            return
        messages.append({"role": "user", "content": question})
        answer: Message = {"role": "assistant", "content": ""}
        yield _snapshot(messages), conversation_id, ""
        tokens: list[str] = []
        shown = False

        def show_answer(position: int | None = None) -> None:
            nonlocal shown
            if not shown:
                messages.insert(len(messages) if position is None else position, answer)
                shown = True

        try:
            client = self._client(user)
            options = chat_options(rag=use_documents, references=show_references)
            async for event in client.chat(question, conversation_id or None, options):
                kind = event.WhichOneof("event")
                if kind == "started":
                    conversation_id = event.started.conversation_id or conversation_id
                elif kind == "condensed":
                    condensed = event.condensed.question.strip()
                    if condensed and condensed != question:
                        messages.append(
                            {
                                "role": "assistant",
                                "content": condensed,
                                "metadata": {"title": "Searched for", "status": "done"},
                            }
                        )
                elif kind == "token":
                    tokens.append(event.token.text)
                    answer["content"] = "".join(tokens)
                    show_answer()
                elif kind == "references":
                    passages = list(event.references.passages)
                    if passages:
                        show_answer()
                        messages.append(
                            {
                                "role": "assistant",
                                "content": references_markdown(passages),
                                "metadata": {"title": f"References ({len(passages)})", "status": "done"},
                            }
                        )
                elif kind == "done":
                    if event.done.answer and event.done.answer != answer["content"]:
                        answer["content"] = event.done.answer
                    show_answer(_answer_position(messages))
                yield _snapshot(messages), conversation_id, ""
        except GatewayError as error:
            messages.append({"role": "assistant", "content": error_text(error)})
            yield _snapshot(messages), conversation_id, ""

    async def upload(self, files: Sequence[str] | None, user: str) -> AsyncIterator[str]:
        """Upload files one by one; yields a Markdown status: a live line, then each summary."""
        paths = [Path(f) for f in files or []]
        if not paths:
            yield "Choose one or more files first."
            return
        finished: list[str] = []

        def status(live: str = "") -> str:
            return "\n\n".join([*finished, live] if live else finished)

        try:
            client = self._client(user)
        except GatewayError as error:
            yield error_text(error)
            return
        for path in paths:
            name = path.name
            yield status(f"⏳ {md(name)}: uploading…")
            try:
                response = await client.upload(path)
                document = response.document
                failure = ""
                if response.job_id:
                    async for event in client.watch_job(response.job_id):
                        if event.stage == common_pb2.INGEST_STAGE_FAILED:
                            failure = event.message or "ingest failed"
                        elif event.stage == common_pb2.INGEST_STAGE_DONE and event.HasField("document"):
                            document = event.document
                        else:
                            yield status(f"⏳ {md(progress_text(name, event))}")
            except GatewayError as error:
                failure = error.message
            except OSError as error:
                failure = f"cannot read the file ({error.strerror or error})"
            if failure:
                finished.append(f"❌ **{md(name)}**: {md(failure)}")
            else:
                line = f"✅ **{md(document.title or name)}** (`{document.doc_id or response.doc_id}`)"
                if response.duplicate:
                    line += " — already uploaded"
                if document.summary:
                    line += f"\n\n{md(document.summary)}"
                finished.append(line)
            yield status()

    async def documents(self, user: str) -> tuple[list[list[Any]], str]:
        """Rows for the document table, and a status line (empty, or the error)."""
        try:
            documents = await self._client(user).list_documents()
        except GatewayError as error:
            return [], error_text(error)
        rows = [[d.title or d.source, status_word(d.status), d.pages, d.chunks, d.doc_id, d.source] for d in documents]
        return rows, "" if rows else "No documents yet."

    async def delete(self, doc_id: str, user: str) -> tuple[list[list[Any]], str]:
        doc_id = (doc_id or "").strip()
        if not doc_id:
            rows, _ = await self.documents(user)
            return rows, "Enter the doc id to delete."
        try:
            await self._client(user).delete_document(doc_id)
        except GatewayError as error:
            rows, _ = await self.documents(user)
            return rows, error_text(error)
        rows, listing_error = await self.documents(user)
        return rows, listing_error if listing_error.startswith("⚠️") else f"Deleted {md(doc_id)}."

    @staticmethod
    def new_conversation() -> tuple[list[Message], str, str]:
        return [], "", ""


def _snapshot(messages: list[Message]) -> list[Message]:
    """A copy per update, so every streamed state stands on its own (Gradio diffs successive ones)."""
    return [dict(message) for message in messages]


def _answer_position(messages: list[Message]) -> int:
    """Where a late answer goes: before a trailing references block, else at the end."""
    if messages and (messages[-1].get("metadata") or {}).get("title", "").startswith("References"):
        return len(messages) - 1
    return len(messages)


def build_app(client_factory: ClientFactory, *, default_user_id: str = "") -> Any:
    """The Gradio Blocks of the app (returned as ``gr.Blocks``); nothing runs until launched."""
    import gradio as gr

    handlers = Handlers(client_factory)

    async def on_chat(
        question: str, history: list[Message], conversation_id: str, user: str, use_docs: bool, show_refs: bool
    ) -> AsyncIterator[tuple[list[Message], str, str]]:
        async for update in handlers.chat(question, history, conversation_id, user, use_docs, show_refs):
            yield update

    async def on_upload(files: list[str] | None, user: str) -> AsyncIterator[str]:
        async for update in handlers.upload(files, user):
            yield update

    async def on_refresh(user: str) -> tuple[list[list[Any]], str]:
        return await handlers.documents(user)

    async def on_delete(doc_id: str, user: str) -> tuple[list[list[Any]], str]:
        return await handlers.delete(doc_id, user)

    with gr.Blocks(title="ragchat", analytics_enabled=False) as app:
        gr.Markdown("## ragchat — chat with your documents")
        conversation_id = gr.State("")
        with gr.Row():
            user = gr.Textbox(label="User id", value=default_user_id, scale=3)
            new_chat = gr.Button("New conversation", scale=1)
        with gr.Tab("Chat"):
            chatbot = gr.Chatbot(label="Conversation", height=520, feedback_options=None)
            with gr.Row():
                question = gr.Textbox(
                    show_label=False, placeholder="Ask a question about your documents…", scale=8, autofocus=True
                )
                send = gr.Button("Send", variant="primary", scale=1)
            with gr.Row():
                use_docs = gr.Checkbox(value=True, label="Use my documents")
                show_refs = gr.Checkbox(value=True, label="Show references")
        with gr.Tab("Documents"):
            files = gr.File(label="Upload documents", file_count="multiple", type="filepath")
            upload = gr.Button("Upload", variant="primary")
            upload_status = gr.Markdown()
            with gr.Row():
                refresh = gr.Button("Refresh list")
                doc_id = gr.Textbox(label="Doc id to delete", scale=3)
                delete = gr.Button("Delete", variant="stop")
            docs_status = gr.Markdown()
            docs = gr.Dataframe(headers=DOCUMENT_HEADERS, interactive=False, wrap=True)

        chat_inputs = [question, chatbot, conversation_id, user, use_docs, show_refs]
        chat_outputs = [chatbot, conversation_id, question]
        question.submit(on_chat, chat_inputs, chat_outputs, api_name="chat")
        send.click(on_chat, chat_inputs, chat_outputs, api_visibility="undocumented")
        new_chat.click(handlers.new_conversation, None, chat_outputs, api_name="new_conversation")
        upload.click(on_upload, [files, user], upload_status, api_name="upload").then(
            on_refresh, user, [docs, docs_status], api_visibility="undocumented"
        )
        refresh.click(on_refresh, user, [docs, docs_status], api_name="documents")
        delete.click(on_delete, [doc_id, user], [docs, docs_status], api_name="delete_document")
        user.submit(on_refresh, user, [docs, docs_status], api_visibility="undocumented")
        app.load(on_refresh, user, [docs, docs_status], api_visibility="undocumented")
    return app


@dataclass(frozen=True)
class WebConfig:
    gateway: str
    host: str
    port: int
    token: str | None
    log_level: str

    @classmethod
    def from_env(cls, env: Env) -> WebConfig:
        return cls(
            gateway=env.address("GATEWAY_ADDR", DEFAULT_GATEWAY),
            host=env.string("UI_HOST", "127.0.0.1"),
            port=env.integer("UI_PORT", 7860, minimum=1, maximum=65535),
            token=env.optional("RAGCHAT_TOKEN"),
            log_level=env.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
        )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    try:
        config = WebConfig.from_env(Env())
    except ConfigError as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    setup_logging("ui", config.log_level)
    # SIGTERM (from the supervisor) closes the server like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    app = build_app(ClientPool(config.gateway, config.token), default_user_id=default_user())
    log.info("starting web ui", extra={"host": config.host, "port": config.port, "gateway": config.gateway})
    app.queue(default_concurrency_limit=16)
    app.launch(server_name=config.host, server_port=config.port, show_error=False, quiet=True, footer_links=[])
    return 0


if __name__ == "__main__":
    sys.exit(main())
