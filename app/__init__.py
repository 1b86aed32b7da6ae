"""The medot Gradio app: a thin layer over :mod:`medot` that holds no maths."""
