"""The OpenAI batch cookbook's movie categorisation request, as the notebook writes it."""

from __future__ import annotations

from typing import Any

__all__ = ["CATEGORIZE_SYSTEM_PROMPT", "cookbook_task"]

#: The OpenAI batch cookbook's system prompt and request, as it is.
CATEGORIZE_SYSTEM_PROMPT = """
Your goal is to extract movie categories from movie descriptions, as well as a 1-sentence summary for these movies.
You will be provided with a movie description, and you will output a json object containing the following information:

{
    categories: string[] // Array of categories based on the movie description,
    summary: string // 1-sentence summary of the movie based on the movie description
}

Categories refer to the genre or type of the movie, like "action", "romance", "comedy", etc. Keep category names simple and use only lower case letters.
Movies can have several categories, but try to keep it under 3-4. Only mention the categories that are the most obvious based on the description.
"""  # noqa: E501


def cookbook_task(index: int, description: str) -> dict[str, Any]:
    return {
        "custom_id": f"task-{index}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-4o-mini",
            "temperature": 0.1,
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": CATEGORIZE_SYSTEM_PROMPT},
                {"role": "user", "content": description},
            ],
        },
    }
