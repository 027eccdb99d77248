"""Typed async Python clients of ragchat's gRPC APIs, for programs and notebooks.

* :class:`services.clients.gateway.GatewayClient`: the public API (chat, search, documents,
  conversations) acting for one user.
* :class:`services.clients.retrieval.RetrievalClient`: the internal retrieval service.
* :class:`services.clients.langchain_retriever.RagchatRetriever`: a LangChain ``BaseRetriever``
  over the retrieval service.

Every module's docstring has a runnable example.
"""
