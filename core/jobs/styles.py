"""The prompt presets an order can use (OrderService.ListStyles).

Each prompt names the model's trigger token (`{token}`), the word its LoRA was trained to bind to the
person (see trainer/lora.py), followed by "person" as in DreamBooth's "a photo of sks person". Style ids
are part of the API: keep them stable; add new ones rather than changing what an id means.
"""

from __future__ import annotations

from dataclasses import dataclass

NEGATIVE = "blurry, low quality, deformed, disfigured, extra limbs, text, watermark, nude, nsfw"


@dataclass(frozen=True)
class Style:
    id: str
    display_name: str
    description: str
    prompt: str  # with {token}
    negative_prompt: str = NEGATIVE

    def prompt_for(self, trigger_token: str) -> str:
        return self.prompt.format(token=trigger_token)


STYLES: tuple[Style, ...] = (
    Style(
        "studio",
        "Studio portrait",
        "A classic head-and-shoulders portrait with soft studio lighting.",
        "a professional studio portrait photo of {token} person, soft lighting, neutral background, 85mm",
    ),
    Style(
        "business",
        "Business headshot",
        "A clean corporate headshot for a profile page.",
        "a corporate headshot of {token} person wearing business attire, office background, sharp focus",
    ),
    Style(
        "outdoor",
        "Golden hour",
        "Outdoors in warm evening light.",
        "a photo of {token} person outdoors at golden hour, warm sunlight, bokeh background",
    ),
    Style(
        "oil_painting",
        "Oil painting",
        "A painted portrait in the style of the old masters.",
        "an oil painting portrait of {token} person, classical style, visible brush strokes",
    ),
    Style(
        "watercolor",
        "Watercolour",
        "A light watercolour illustration.",
        "a watercolor illustration of {token} person, soft pastel colors, paper texture",
    ),
    Style(
        "comic",
        "Comic book",
        "Bold lines and flat colours.",
        "a comic book illustration of {token} person, bold ink lines, flat colors",
    ),
)

BY_ID = {style.id: style for style in STYLES}


def get(style_id: str) -> Style | None:
    return BY_ID.get(style_id)
