"""Latin-script word pools for OCR, receipts, tables and chart labels (the rendered text stays Latin,
since the offline fonts have no CJK glyphs). Must not: hold state; these are constants."""

from __future__ import annotations

WORDS = tuple("""
cat dog sun map pen cup box key hat bus car egg ice jam kit log net oak pig ram sky tea van web yak zip
apple bread chair dance eagle flame grape house judge knife lemon mango night ocean piano queen river
stone tiger umbra vivid whale youth zebra amber blaze cedar delta ember frost glide haven ivory jolly
karma lunar maple noble orbit pearl quest radar solar tulip urban valor wheat yield bloom crisp
garden market window silver castle pocket rabbit sunset travel velvet winter yellow basket candle
doctor engine forest guitar harbor island jungle kitten ladder meadow needle orange pencil quartz
rocket saddle tomato violet wallet anchor bridge cactus dragon falcon galaxy hammer jacket marble
blanket cabinet diamond evening freedom gallery harvest journey kitchen lantern morning network
octopus pattern quality rainbow station teacher uniform village weather example balance captain
chicken dolphin feather glacier horizon imagine justice kingdom library machine picture science
airplane baseball calendar daughter elephant festival hospital keyboard language mountain notebook
painting question sandwich treasure umbrella vacation waterfall yesterday adventure butterfly chocolate
dinosaur education furniture happiness important lighthouse milestone nightfall orchestra pineapple
""".split())

RECEIPT_ITEMS = ("apple", "bread", "milk", "eggs", "rice", "cheese", "butter", "coffee", "tea", "juice", "pasta",
                 "sugar", "salt", "honey", "yogurt", "banana", "tomato", "onion", "carrot", "soap", "water", "soda",
                 "cookies", "chicken", "fish", "beans", "flour", "lemon", "grapes", "cereal", "pizza", "salad",
                 "noodles", "olive oil", "peanuts", "chips", "candy", "ham", "tofu", "melon")
STORES = ("FRESH MART", "CITY SHOP", "MINI MARKET", "GREEN GROCER", "QUICK STOP", "CORNER STORE", "DAILY FOODS",
          "SUN MARKET", "BLUE STORE", "HAPPY SHOP", "STAR MART", "NORTH DELI")
NAMES = ("Anna", "Ben", "Carl", "Dina", "Eva", "Finn", "Gina", "Hugo", "Ivan", "Jana", "Karl", "Lena", "Marc",
         "Nina", "Omar", "Paul", "Rosa", "Sven", "Tina", "Uma", "Vera", "Walt", "Yara", "Zack", "Kim", "Leo", "Mia")
CITIES = ("Paris", "Tokyo", "Rome", "Oslo", "Cairo", "Lima", "Delhi", "Seoul", "Berlin", "Madrid", "Dublin",
          "Quito", "Hanoi", "Doha", "Riga", "Bern", "Kyiv", "Accra", "Perth", "Miami")
# Table schemas: column names and how a cell value is drawn ("name", "city", "int:lo:hi", "dec:lo:hi").
TABLE_SCHEMAS = (
    ("Name", "Age", "City"),
    ("Name", "Score"),
    ("City", "Temp", "Rain"),
    ("Name", "Team", "Goals"),
    ("Item", "Qty", "Price"),
    ("Name", "Age"),
)
COLUMN_KIND = {"Name": "name", "Age": "int:18:80", "City": "city", "Score": "int:0:100", "Temp": "int:-5:40",
               "Rain": "int:0:300", "Team": "word", "Goals": "int:0:30", "Item": "item", "Qty": "int:1:9",
               "Price": "dec:1:50"}
COLUMN_ZH = {"Name": "姓名", "Age": "年龄", "City": "城市", "Score": "分数", "Temp": "温度", "Rain": "降雨量",
             "Team": "队伍", "Goals": "进球数", "Item": "商品", "Qty": "数量", "Price": "价格"}
TEAMS = ("Lions", "Hawks", "Bears", "Wolves", "Sharks", "Eagles", "Tigers", "Foxes", "Owls", "Bulls")
CHART_LABELS = ("A", "B", "C", "D", "E", "F", "G", "H", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun", "Jan", "Feb",
                "Mar", "Apr", "May", "Jun", "red", "blue", "cats", "dogs", "tea", "milk", "Q1", "Q2", "Q3", "Q4",
                "north", "south", "east", "west")
# Codes avoid glyphs that many fonts draw alike (I/1/l, O/0), which would cap OCR accuracy for no reason.
CODE_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
