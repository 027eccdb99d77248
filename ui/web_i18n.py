"""The web app's words in English and Korean.

Labels are translated in the browser by Gradio's i18n (``gr.I18n`` built from :data:`MESSAGES`,
following the browser's language); messages the handlers write (errors, progress, notes) are
translated on the server with :func:`translate`, in the language of the request's
``Accept-Language`` header (:func:`language_of`). Both read the same table, so a key is
translated once. No Gradio import here.
"""

from __future__ import annotations

from collections.abc import Mapping

LANGUAGES = ("en", "ko")
DEFAULT_LANGUAGE = "en"

MESSAGES: Mapping[str, Mapping[str, str]] = {
    "en": {
        # labels
        "app_title": "ragchat — chat with your documents",
        "tab_chat": "Chat",
        "tab_documents": "Documents",
        "sign_in": "Sign in",
        "user_id": "User id",
        "token": "Access token",
        "token_placeholder": "Paste the token you were given",
        "sign_in_button": "Sign in",
        "conversations": "Conversations",
        "new_conversation": "New conversation",
        "refresh": "Refresh",
        "conversation_title": "Title",
        "rename": "Rename",
        "delete_conversation": "Delete conversation",
        "settings": "Settings",
        "use_documents": "Use my documents (RAG)",
        "show_references": "Show references",
        "top_k": "Passages to retrieve",
        "conversation_mode": "Conversation mode (follow-up questions use the history)",
        "conversation": "Conversation",
        "question_placeholder": "Ask a question about your documents…",
        "send": "Send",
        "stop": "Stop",
        "upload_files": "Drop files here or click to choose (PDF, text, Markdown)",
        "upload": "Upload",
        "your_documents": "Your documents",
        "document_to_delete": "Document",
        "delete_document": "Delete document",
        "col_title": "Title",
        "col_status": "Status",
        "col_pages": "Pages",
        "col_size": "Size",
        "col_chunks": "Chunks",
        "col_uploaded": "Uploaded",
        "col_doc_id": "Doc ID",
        # messages written by the handlers ({name} placeholders are filled in)
        "enter_user": "Enter a user id first.",
        "enter_token": "Sign in first: paste your access token.",
        "signed_in": "Signed in.",
        "choose_files": "Choose one or more files first.",
        "no_documents": "No documents yet: drop files above and press Upload.",
        "choose_document": "Choose a document to delete.",
        "deleted_document": "Deleted {name}.",
        "no_conversations": "No conversations yet.",
        "choose_conversation": "Choose a conversation first.",
        "enter_title": "Type the new title first.",
        "renamed": "Renamed to {title}.",
        "deleted_conversation": "Conversation deleted.",
        "stopped": "stopped",
        "searched_for": "Searched for",
        "references": "References ({count})",
        "full_passage": "Open the full passage",
        "score": "score",
        "page": "p. {page}",
        "no_page": "no page",
        "turns": "{count} turns",
        "uploading": "uploading",
        "already_uploaded": "already uploaded",
        "cannot_read": "cannot read the file ({detail})",
        "ingest_failed": "ingest failed",
        "stage_waiting": "waiting",
        "stage_queued": "queued",
        "stage_stored": "stored",
        "stage_extracting": "extracting",
        "stage_chunking": "chunking",
        "stage_embedding": "embedding",
        "stage_indexed": "indexed",
        "stage_summarising": "summarising",
        "stage_done": "done",
        "stage_failed": "failed",
        "stage_working": "working",
        "unit_pages": "pages",
        "unit_chunks": "chunks",
        "status_pending": "pending",
        "status_ready": "ready",
        "status_processing": "processing",
        "status_failed": "failed",
        "status_unknown": "unknown",
    },
    "ko": {
        "app_title": "ragchat — 내 문서와 대화하기",
        "tab_chat": "채팅",
        "tab_documents": "문서",
        "sign_in": "로그인",
        "user_id": "사용자 ID",
        "token": "액세스 토큰",
        "token_placeholder": "발급받은 토큰을 붙여 넣으세요",
        "sign_in_button": "로그인",
        "conversations": "대화 목록",
        "new_conversation": "새 대화",
        "refresh": "새로 고침",
        "conversation_title": "제목",
        "rename": "이름 바꾸기",
        "delete_conversation": "대화 삭제",
        "settings": "설정",
        "use_documents": "내 문서 사용 (RAG)",
        "show_references": "참고 문헌 보기",
        "top_k": "검색할 구절 수",
        "conversation_mode": "대화 모드 (후속 질문에 이전 대화를 사용)",
        "conversation": "대화",
        "question_placeholder": "문서에 대해 질문하세요…",
        "send": "보내기",
        "stop": "중지",
        "upload_files": "파일을 여기에 끌어다 놓거나 클릭해서 선택하세요 (PDF, 텍스트, Markdown)",
        "upload": "업로드",
        "your_documents": "내 문서",
        "document_to_delete": "문서",
        "delete_document": "문서 삭제",
        "col_title": "제목",
        "col_status": "상태",
        "col_pages": "페이지",
        "col_size": "크기",
        "col_chunks": "청크",
        "col_uploaded": "업로드 날짜",
        "col_doc_id": "문서 ID",
        "enter_user": "먼저 사용자 ID를 입력하세요.",
        "enter_token": "먼저 로그인하세요: 액세스 토큰을 붙여 넣으세요.",
        "signed_in": "로그인되었습니다.",
        "choose_files": "먼저 파일을 하나 이상 선택하세요.",
        "no_documents": "아직 문서가 없습니다. 위에 파일을 끌어다 놓고 업로드를 누르세요.",
        "choose_document": "삭제할 문서를 선택하세요.",
        "deleted_document": "{name} 문서를 삭제했습니다.",
        "no_conversations": "아직 대화가 없습니다.",
        "choose_conversation": "먼저 대화를 선택하세요.",
        "enter_title": "먼저 새 제목을 입력하세요.",
        "renamed": "제목을 {title}(으)로 바꿨습니다.",
        "deleted_conversation": "대화를 삭제했습니다.",
        "stopped": "중지됨",
        "searched_for": "검색한 질문",
        "references": "참고 문헌 ({count})",
        "full_passage": "전체 구절 보기",
        "score": "점수",
        "page": "{page}쪽",
        "no_page": "쪽 정보 없음",
        "turns": "{count}개 질문",
        "uploading": "업로드 중",
        "already_uploaded": "이미 업로드됨",
        "cannot_read": "파일을 읽을 수 없습니다 ({detail})",
        "ingest_failed": "처리 실패",
        "stage_waiting": "대기 중",
        "stage_queued": "대기열",
        "stage_stored": "저장됨",
        "stage_extracting": "텍스트 추출 중",
        "stage_chunking": "분할 중",
        "stage_embedding": "임베딩 중",
        "stage_indexed": "색인됨",
        "stage_summarising": "요약 중",
        "stage_done": "완료",
        "stage_failed": "실패",
        "stage_working": "처리 중",
        "unit_pages": "쪽",
        "unit_chunks": "청크",
        "status_pending": "대기 중",
        "status_ready": "준비됨",
        "status_processing": "처리 중",
        "status_failed": "실패",
        "status_unknown": "알 수 없음",
    },
}


def language_of(accept_language: str | None) -> str:
    """The first supported language of an ``Accept-Language`` header, by quality; else English.

    ``"ko-KR,ko;q=0.9,en-US;q=0.8"`` → ``"ko"``; ``"fr, en;q=0.5"`` → ``"en"``.
    """
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate((accept_language or "").split(",")):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        primary = tag.strip().split("-")[0].lower()
        if primary in LANGUAGES and quality > 0:
            ranked.append((-quality, position, primary))
    return min(ranked)[2] if ranked else DEFAULT_LANGUAGE


def translate(key: str, language: str = DEFAULT_LANGUAGE, **values: object) -> str:
    """The message ``key`` in ``language`` (English when it has no such entry), formatted with ``values``."""
    table = MESSAGES.get(language, MESSAGES[DEFAULT_LANGUAGE])
    text = table.get(key) or MESSAGES[DEFAULT_LANGUAGE][key]
    return text.format(**values) if values else text
