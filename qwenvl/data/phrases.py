"""English and Chinese wording for the synthetic tasks: vocabulary, noun phrases and question templates.

Every question has several phrasings per language, drawn with the sample's rng, and every split draws
from the same pools (the test split is phrased exactly as varied as training). Answers are short
canonical strings; `meta["answers"]` in the records lists the accepted variants.
Must not: draw pixels or choose content; it only turns chosen content into words.
"""

from __future__ import annotations

import random

LANGS = ("en", "zh")

COLOUR = {"en": {c: c for c in ("red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black",
                                "gray", "cyan")},
          "zh": {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "orange": "橙色", "purple": "紫色",
                 "pink": "粉色", "brown": "棕色", "black": "黑色", "gray": "灰色", "cyan": "青色"}}
SHAPE = {"en": {s: s for s in ("circle", "square", "triangle", "star", "diamond", "hexagon")},
         "zh": {"circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "五角星", "diamond": "菱形",
                "hexagon": "六边形"}}
SIZE = {"en": {"small": "small", "medium": "medium", "large": "large"},
        "zh": {"small": "小", "medium": "中等", "large": "大"}}
_SIZE_ADJ = {"en": {"small": "small", "medium": "medium-sized", "large": "large"},
             "zh": {"small": "小的", "medium": "中等大小的", "large": "大的"}}
REGION = {"en": {r: r for r in ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom",
                                "bottom right")},
          "zh": {"top left": "左上角", "top": "上方", "top right": "右上角", "left": "左侧", "center": "中间",
                 "right": "右侧", "bottom left": "左下角", "bottom": "下方", "bottom right": "右下角"}}
_REGION_AT = {"top left": "in the top left corner", "top": "at the top", "top right": "in the top right corner",
              "left": "on the left", "center": "in the center", "right": "on the right",
              "bottom left": "in the bottom left corner", "bottom": "at the bottom",
              "bottom right": "in the bottom right corner"}
RELATION = {"en": {"left": "left", "right": "right", "above": "above", "below": "below"},
            "zh": {"left": "左边", "right": "右边", "above": "上面", "below": "下面"}}
_RELATION_PHRASE = {"en": {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}}
DIRECTION = {"en": {d: d for d in ("left", "right", "up", "down", "up-left", "up-right", "down-left", "down-right")},
             "zh": {"left": "向左", "right": "向右", "up": "向上", "down": "向下", "up-left": "向左上",
                    "up-right": "向右上", "down-left": "向左下", "down-right": "向右下"}}
YES = {"en": "yes", "zh": "是"}
NO = {"en": "no", "zh": "否"}
_EN_NUM = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
_ZH_NUM = "零一二三四五六七八九十"


def number(n: int, lang: str, measure: bool = False) -> str:
    """Number word: 'three' / '三' ('两' before a measure word, as Chinese says 两个)."""
    if lang == "en":
        return _EN_NUM[n] if n < len(_EN_NUM) else str(n)
    if measure and n == 2:
        return "两"
    if n <= 10:
        return _ZH_NUM[n]
    return ("" if n < 20 else _ZH_NUM[n // 10]) + "十" + (_ZH_NUM[n % 10] if n % 10 else "") if n < 100 else str(n)


def count_answers(n: int, lang: str) -> list[str]:
    """Accepted forms of a count: the digits first (the canonical answer)."""
    if lang == "en":
        return [str(n), number(n, "en")]
    return [str(n), number(n, "zh"), f"{n}个", f"{number(n, 'zh', True)}个"]


def yes_no(value: bool, lang: str) -> list[str]:
    if lang == "en":
        return ["yes", "Yes"] if value else ["no", "No"]
    return ["是", "是的", "对"] if value else ["否", "不是", "不"]


def noun(lang: str, shape: str | None = None, colour: str | None = None, size: str | None = None,
         article: str = "the", plural: bool = False) -> str:
    """'the large red circle' / 'a red circle' / 'circles' / '大的红色圆形'; any attribute may be None."""
    if lang == "zh":
        return (_SIZE_ADJ["zh"][size] if size else "") + (COLOUR["zh"][colour] if colour else "") + (
            SHAPE["zh"][shape] if shape else "图形")
    words = [_SIZE_ADJ["en"][size] if size else None, colour, shape or "object"]
    phrase = " ".join(w for w in words if w)
    if plural:
        return phrase + ("es" if phrase.endswith("x") else "s")
    if article == "a":
        return ("an " if phrase[0] in "aeiou" else "a ") + phrase
    return f"{article} {phrase}" if article else phrase


def region_at(region: str, lang: str) -> str:
    return _REGION_AT[region] if lang == "en" else "在" + REGION["zh"][region]


def relation_phrase(rel: str, other: str, lang: str) -> str:
    """'to the left of the blue square' / '在蓝色正方形的左边'."""
    return f"{_RELATION_PHRASE['en'][rel]} {other}" if lang == "en" else f"在{other}的{RELATION['zh'][rel]}"


def join(items: list[str], lang: str) -> str:
    if lang == "zh":
        return "、".join(items)
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + ", and " + items[-1]


def image_name(k: int, lang: str) -> str:
    """How answers name the k-th image (1-based) of a multi-image prompt."""
    return f"Image {k}" if lang == "en" else f"第{k}张图"


def image_name_answers(k: int, lang: str) -> list[str]:
    if lang == "en":
        return [f"Image {k}", f"image {k}", f"Picture {k}", f"the {('first', 'second', 'third', 'fourth')[k - 1]}"]
    return [f"第{k}张图", f"第{k}张", f"图{k}", f"第{number(k, 'zh')}张图"]


# Templates: key -> lang -> phrasings (str.format fields named in braces).
T: dict[str, dict[str, list[str]]] = {
    "caption": {
        "en": ["Describe the image.", "What do you see in this picture?", "Write a short caption for this image.",
               "Describe the shapes in the image.", "Give a brief description of the image."],
        "zh": ["描述这张图片。", "图中有什么？", "为这张图片写一句简短的描述。", "描述图中的图形。",
               "请简要描述这张图片。"]},
    "colour": {
        "en": ["What colour is {obj}?", "What is the colour of {obj}?", "Which colour does {obj} have?",
               "Tell me the colour of {obj}.", "What color is {obj}?", "What is the color of {obj}?"],
        "zh": ["{obj}是什么颜色的？", "{obj}的颜色是什么？", "图中{obj}是什么颜色？", "请说出{obj}的颜色。"]},
    "shape": {
        "en": ["What shape is {obj}?", "What is the shape of {obj}?", "Which shape is {obj}?",
               "Name the shape of {obj}."],
        "zh": ["{obj}是什么形状？", "{obj}的形状是什么？", "图中{obj}是什么图形？", "请说出{obj}的形状。"]},
    "size": {
        "en": ["Is {obj} small, medium or large?", "What size is {obj}: small, medium or large?",
               "How big is {obj}? Answer small, medium or large."],
        "zh": ["{obj}是小、中等还是大？", "{obj}的大小是小、中等还是大？", "{obj}有多大？请回答小、中等或大。"]},
    "position": {
        "en": ["Where is {obj} in the image?", "In which part of the image is {obj}?",
               "Where in the picture is {obj} located?"],
        "zh": ["{obj}在图片的什么位置？", "{obj}位于图中的哪个区域？", "{obj}在图的哪里？"]},
    "relation": {
        "en": ["Where is {a} relative to {b}? Answer left, right, above or below.",
               "Is {a} to the left of, to the right of, above or below {b}?",
               "Relative to {b}, where is {a}: left, right, above or below?"],
        "zh": ["{a}在{b}的什么方位？请回答左边、右边、上面或下面。", "{a}在{b}的左边、右边、上面还是下面？",
               "相对于{b}，{a}在哪个方向？"]},
    "relation_yn": {
        "en": ["Is {a} {rel} {b}?", "Is it true that {a} is {rel} {b}?"],
        "zh": ["{a}在{b}的{rel}吗？", "{a}是不是在{b}的{rel}？"]},
    "exists": {
        "en": ["Is there {obj} in the image?", "Does the image contain {obj}?", "Can you see {obj}?"],
        "zh": ["图中有{obj}吗？", "这张图片里有没有{obj}？", "你能看到{obj}吗？"]},
    "count": {
        "en": ["How many {objs} are there?", "How many {objs} are in the image?", "Count the {objs}.",
               "What is the number of {objs} in the picture?"],
        "zh": ["图中有几个{objs}？", "图片里有多少个{objs}？", "数一数图中的{objs}。", "这张图里{objs}的数量是多少？"]},
    "ground": {
        "en": ["Where is {obj}? Give its bounding box.", "Find {obj}.", "Locate {obj} in the image.",
               "Draw a box around {obj}.", "Detect {obj}."],
        "zh": ["{obj}在哪里？请给出边界框。", "找出{obj}。", "在图中定位{obj}。", "请框出{obj}。",
               "检测图中的{obj}。"]},
    "ground_all": {
        "en": ["Find all the {objs}.", "Locate every {obj} in the image.", "Give the bounding boxes of all {objs}."],
        "zh": ["找出所有的{objs}。", "定位图中每一个{obj}。", "给出所有{objs}的边界框。"]},
    "region": {
        "en": ["What is in the region {box}?", "Describe the object at {box}.", "What is shown inside {box}?"],
        "zh": ["区域{box}中是什么？", "描述位于{box}的物体。", "{box}里面是什么？"]},
    "grounded_caption": {
        "en": ["Describe the image and locate each object.", "Caption the image, grounding every object with a box.",
               "Describe the image with bounding boxes for the objects."],
        "zh": ["描述这张图片并定位每个物体。", "为图片写描述，并给出每个物体的边界框。",
               "用边界框标出图中物体并描述图片。"]},
    "ocr": {
        "en": ["What text is written in the image?", "Read the text in the image.", "What does the text say?",
               "Transcribe the text shown in this picture."],
        "zh": ["图中写的是什么文字？", "请读出图片中的文字。", "图里的文字是什么？", "识别这张图片中的文字。"]},
    "ocr_ground": {
        "en": ["Where is the text \"{text}\"? Give its bounding box.", "Locate the text \"{text}\"."],
        "zh": ["文字“{text}”在哪里？请给出边界框。", "定位文字“{text}”。"]},
    "doc_markdown": {
        "en": ["Convert this {doc} to a markdown table.", "Transcribe the {doc} as markdown.",
               "Extract the contents of the {doc} as a markdown table."],
        "zh": ["把这张{doc}转换成Markdown表格。", "将{doc}内容转写为Markdown。",
               "以Markdown表格提取这张{doc}的内容。"]},
    "doc_total": {
        "en": ["What is the total on the receipt?", "How much is the total?", "What is the total amount?"],
        "zh": ["收据上的总计是多少？", "总金额是多少？", "这张收据一共多少钱？"]},
    "doc_cell": {
        "en": ["What is the {col} of {row}?", "In the table, what is {row}'s {col}?", "Find the {col} for {row}."],
        "zh": ["{row}的{col}是多少？", "表格中{row}的{col}是什么？", "请找出{row}对应的{col}。"]},
    "doc_price": {
        "en": ["What is the amount for {item}?", "How much was paid for {item}?"],
        "zh": ["{item}的金额是多少？", "{item}花了多少钱？"]},
    "chart_value": {
        "en": ["What is the value of {label}?", "How high is the bar for {label}?", "What value does {label} have?"],
        "zh": ["{label}的数值是多少？", "{label}对应的柱子有多高？", "{label}的值是多少？"]},
    "chart_max": {
        "en": ["Which bar is the tallest?", "Which category has the highest value?",
               "Which label has the largest value?"],
        "zh": ["哪个柱子最高？", "哪个类别的数值最大？", "哪个标签的值最大？"]},
    "chart_min": {
        "en": ["Which bar is the shortest?", "Which category has the lowest value?",
               "Which label has the smallest value?"],
        "zh": ["哪个柱子最矮？", "哪个类别的数值最小？", "哪个标签的值最小？"]},
    "chart_count": {
        "en": ["How many bars are in the chart?", "How many categories does the chart show?"],
        "zh": ["图表中有几根柱子？", "这个图表显示了多少个类别？"]},
    "chart_compare": {
        "en": ["Is the value of {a} greater than that of {b}?", "Is {a} higher than {b}?"],
        "zh": ["{a}的数值比{b}大吗？", "{a}比{b}高吗？"]},
    "chart_markdown": {
        "en": ["Convert the chart to a markdown table.", "Write the data of this bar chart as a markdown table."],
        "zh": ["把这个图表转换成Markdown表格。", "用Markdown表格写出这个柱状图的数据。"]},
    "compare_more": {
        "en": ["Which image has more {objs}?", "Which picture contains the most {objs}?",
               "In which image are there the most {objs}?"],
        "zh": ["哪张图中的{objs}更多？", "哪张图片里{objs}最多？", "哪张图里的{objs}数量最多？"]},
    "compare_which": {
        "en": ["Which image contains {obj}?", "In which picture can you see {obj}?"],
        "zh": ["哪张图中有{obj}？", "在哪张图片里能看到{obj}？"]},
    "compare_same": {
        "en": ["Are the shapes in the two images the same colour?",
               "Do both images show an object of the same colour?"],
        "zh": ["两张图中的图形颜色相同吗？", "两张图片里的物体是同一种颜色吗？"]},
    "compare_total": {
        "en": ["How many {objs} are there in all the images together?", "Count the {objs} across all images."],
        "zh": ["所有图片中一共有几个{objs}？", "数一数所有图里的{objs}总数。"]},
    "followup": {
        "en": ["And {obj}?", "What about {obj}?", "And for {obj}?"],
        "zh": ["那{obj}呢？", "{obj}呢？", "再看{obj}呢？"]},
    "video_direction": {
        "en": ["Which direction is {obj} moving?", "In which direction does {obj} move in the video?",
               "Where is {obj} heading?"],
        "zh": ["{obj}朝哪个方向移动？", "视频中{obj}往哪个方向运动？", "{obj}向哪里移动？"]},
    "video_which": {
        "en": ["Which object is moving?", "What moves in this video?", "Which shape is in motion?"],
        "zh": ["哪个物体在移动？", "视频中什么在动？", "哪个图形在运动？"]},
    "video_static": {
        "en": ["How many objects stay still in the video?", "How many shapes do not move?"],
        "zh": ["视频中有几个物体保持不动？", "有多少个图形没有移动？"]},
}
_DOC_NAME = {"en": {"receipt": "receipt", "table": "table"}, "zh": {"receipt": "收据", "table": "表格"}}


def doc_name(kind: str, lang: str) -> str:
    return _DOC_NAME[lang][kind]


def say(rng: random.Random, key: str, lang: str, **fields: str) -> str:
    """One phrasing of template `key` in `lang`, filled with fields."""
    return rng.choice(T[key][lang]).format(**fields)


def sentence_start(text: str, lang: str) -> str:
    return text[:1].upper() + text[1:] if lang == "en" else text
