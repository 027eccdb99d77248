"""Front ends of ragchat: the ``ragchat`` CLI, the local supervisor and the Gradio web app.

All of them are thin clients of the gateway (``ragchat.v1.GatewayService``).
"""
