# medot app image: docker build -t medot . && docker run -p 7860:7860 medot
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    MEDOT_HOME=/home/medot/.medot \
    MEDOT_DATA_ROOT=/home/medot/data

RUN useradd --create-home --uid 1000 medot
WORKDIR /home/medot/app

COPY --chown=medot:medot requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY --chown=medot:medot . .
USER medot
RUN mkdir -p "$MEDOT_HOME" "$MEDOT_DATA_ROOT"

EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=4)"

CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]
