"""Entry point of the assign service: ``python -m services.assign``.

Consumes ``conversation.events``; produces assignment events on the same
topic and automatic-mail requests on ``outbound.requests``.
"""

from __future__ import annotations

from messagehub import metrics, topics
from messagehub import settings as settings_module
from messagehub.service import run_stage_service
from services.assign.stage import AssignStage


def main() -> None:
    settings = settings_module.load()
    metrics.register_assignment_queue(settings.database_url)
    run_stage_service("messagehub-assign", settings, AssignStage(),
                      source_topics=[topics.CONVERSATION_EVENTS],
                      dead_letter_topic=topics.ASSIGN_DEAD_LETTER, lanes=settings.stage_lanes)


if __name__ == "__main__":
    main()
