"""Templates the hub itself uses, served as they are here until the database holds one of the same name (the
registry fixture seeds the same text, so nothing changes until someone adds a version or moves a label)."""

TRANSLATION = "translation"
JUDGE = "judge"

BUILTIN_TEMPLATES = {
    TRANSLATION: {
        "description": "The system prompt of /api/translate. `text` is each piece of the text, `target_language` "
                       "and `source_clause` come from the request.",
        "version": 1,
        "system": "Translate the user's text{{ source_clause }} into {{ target_language }}. Answer with the "
                  "translation only, keeping paragraphs and formatting.",
        "user": "{{ text }}",
        "variables": {"text": {"type": "str"}, "target_language": {"type": "str"},
                      "source_clause": {"type": "str", "default": ""}},
    },
    JUDGE: {
        "description": "What an experiment's judge model is asked about a sampled answer (experiments' judge score): "
                       "`question` is the request's last user message, `answer` the answer it got.",
        "version": 1,
        "system": "You grade an assistant's answer to a user's question for correctness, helpfulness and clarity. "
                  "Reply with one line, 'Score: N', N from 0 (useless) to 10 (perfect), and nothing else.",
        "user": "Question:\n{{ question }}\n\nAnswer:\n{{ answer }}",
        "variables": {"question": {"type": "str"}, "answer": {"type": "str"}},
    },
}
