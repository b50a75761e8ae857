"""Chainlit entry point (placeholder until the app lands): `chainlit run app.py`."""
import chainlit as cl


@cl.on_message
async def on_message(message: cl.Message):
    await cl.Message(content="The app is being built; see README.md.").send()
