/**
 * Training text for the embedded default model's byte-level BPE vocabulary.
 *
 * The default model has random weights, so its vocabulary only has to look and behave like a real one:
 * common English words, code idioms, accented Latin text, CJK and emoji should become a handful of
 * tokens, and everything else must still round-trip through the 256 byte tokens. The text below is
 * written for this purpose. Changing a single character changes the learned merges, therefore the
 * generated tokenizer.json, therefore every model fingerprint built on it: treat edits as a format change.
 */

const ENGLISH = `
The service keeps the attention keys and values of every prompt it has seen, so that the next request
which starts with the same words does not pay for them again. A long system prompt, a shared document or
the history of a conversation is usually the largest part of a request. When the cache already holds it,
the model only has to read the new question, and the first token arrives in a fraction of the time.

Caching is simple to describe and hard to get right. The cache must never return the values of a
different model, a different version of the same model, or a different sequence of tokens that happens
to share a hash. Every block is therefore named by the model's fingerprint, the position of the block
and a chain of hashes over all the tokens before it. Two prompts share a block only if they share every
token up to the end of that block.

Memory is the scarce resource. A small model with twenty-four layers and two key-value heads of
dimension sixty-four needs about twelve kilobytes per token in single precision. Eight thousand tokens
are almost a hundred megabytes. The random access memory fills quickly, so older blocks move to the
solid state disk, and they come back when a request asks for them again. Reading them back is much
faster than computing them, but only if the loading path is careful about copies and allocations.

It was a quiet morning in the old harbour town. The fishermen had already gone out, the bakery on the
corner was selling the last of its bread, and a few children were walking to school along the river.
Nobody noticed the small boat that came in with the tide, its sail torn and its hull covered in salt.
The woman who stepped out of it asked for directions to the library, thanked the baker politely, and
disappeared into the narrow streets before anyone could ask her where she had come from.

Good software is written for the people who will read it later. Names should say what a thing is,
functions should do one thing, and errors should explain what went wrong and what the user can do about
it. Tests are not a ritual: a test that cannot fail protects nothing. Measure before you optimise, and
write down what you measured, on which machine, and how, so that someone else can check it.

Weather report for the weekend: on Saturday, clouds in the morning with sunny spells in the afternoon,
highs around 21 degrees Celsius and a light wind from the west. On Sunday, rain is expected from noon,
with temperatures between 14 and 17 degrees. Visibility will be good, but drivers should take care on
wet roads in the evening. The outlook for next week is mild and mostly dry.

Recipe for a simple tomato soup. Chop two onions and three cloves of garlic and cook them slowly in
olive oil until they are soft. Add one kilogram of ripe tomatoes, a teaspoon of salt, a pinch of sugar
and half a litre of water. Let it simmer for twenty minutes, then blend until smooth. Serve with fresh
basil, a little cream and warm bread. The soup keeps for three days in the fridge.

Questions people often ask: How long does it take? What does it cost? Can I use my own model? Where are
the files stored? What happens when the disk is full? Why is the first request slower than the second?
Each answer belongs in the documentation, with an example that actually runs.

The history of computing is full of caches. Processors keep recently used memory close to the cores,
operating systems keep recently read files in the page cache, browsers keep images and scripts, and
databases keep index pages in a buffer pool. In each case the idea is the same: pay once for the
expensive work, remember the result, and decide carefully what to forget when space runs out.

She opened the letter slowly. "Dear Anna," it began, "I hope this finds you well. The garden is full of
roses this year, and the apple tree your grandfather planted has finally given fruit. We would love to
see you in August, if you can find the time." She smiled, folded the paper, and put it in her pocket.

Numbers and dates appear everywhere: 1, 2, 3, 10, 42, 100, 256, 1024, 4096, 65536, 3.14159, 2.71828,
0.001, 1e-4, 2024-03-15, 12:30:45, version 1.2.3, port 8080, 404 Not Found, 500 Internal Server Error,
HTTP/2, TLS 1.3, IPv4 192.168.0.1, IPv6 ::1, 50% faster, 3x smaller, $19.99, 15 kg, 7 km, 250 ms.

The train to the mountains leaves at seven. From the window you can see the lake, the villages on its
shore and, on a clear day, the glaciers in the distance. Most travellers get off at the last station and
walk the rest of the way. The path climbs through pine forests and meadows full of flowers, past a small
chapel and a farm where they sell cheese, milk and honey. At the top there is a hut with a warm stove.

Language models read text as a sequence of tokens. A token can be a whole word, a piece of a word, a
single character or even a single byte. Byte-level tokenizers never fail: any string of bytes can be
written with the two hundred and fifty-six basic tokens, and frequent sequences get their own, longer
tokens. This is why a tokenizer trained on English text still works on Chinese, emoji or source code,
only less efficiently.

Meeting notes. Attendees: product, engineering, operations. Decisions: the release moves to Thursday;
the migration script needs a dry run on a copy of production data; the dashboard should show the cache
hit rate, the restore latency and the number of evicted blocks. Action items: write the runbook, add an
alert for disk usage above ninety percent, and review the retry policy of the client library.

A careful reader will notice that the second paragraph contradicts the first. The author claims that the
method is both faster and more accurate, but the table shows that it is faster only on small inputs and
less accurate on large ones. This does not make the work useless; it makes the conclusion too strong.
`;

const CODE = String.raw`
import { readFile, writeFile } from "node:fs/promises";
import * as path from "node:path";

export interface BlockKey {
  readonly modelFingerprint: string;
  readonly parentHash: string;
  readonly tokenIds: readonly number[];
}

export class LruList<K, V> {
  private readonly entries = new Map<K, V>();

  constructor(private readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity <= 0) {
      throw new RangeError("capacity must be a positive integer, got " + capacity);
    }
  }

  get(key: K): V | undefined {
    const value = this.entries.get(key);
    if (value !== undefined) {
      this.entries.delete(key);
      this.entries.set(key, value);
    }
    return value;
  }

  set(key: K, value: V): void {
    this.entries.delete(key);
    this.entries.set(key, value);
    while (this.entries.size > this.capacity) {
      const oldest = this.entries.keys().next().value as K;
      this.entries.delete(oldest);
    }
  }
}

export async function loadConfig(dir: string): Promise<Record<string, unknown>> {
  const file = path.join(dir, "config.json");
  const text = await readFile(file, "utf8");
  return JSON.parse(text) as Record<string, unknown>;
}

const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);
const mean = (xs: number[]): number => (xs.length === 0 ? 0 : sum(xs) / xs.length);
for (let i = 0; i < 10; i++) {
  console.log(i, mean([i, i + 1, i + 2]));
}

def softmax(logits, temperature=1.0):
    """Return the probabilities of a list of logits."""
    import math
    scaled = [x / temperature for x in logits]
    top = max(scaled)
    exps = [math.exp(x - top) for x in scaled]
    total = sum(exps)
    return [e / total for e in exps]


class TokenCounter:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.counts = {}

    def add(self, text: str) -> int:
        ids = self.tokenizer.encode(text)
        for token_id in ids:
            self.counts[token_id] = self.counts.get(token_id, 0) + 1
        return len(ids)

    def most_common(self, n=10):
        return sorted(self.counts.items(), key=lambda kv: kv[1], reverse=True)[:n]


if __name__ == "__main__":
    print(softmax([1.0, 2.0, 3.0]))
    with open("data.txt", "r", encoding="utf-8") as f:
        for line in f:
            print(line.strip())

use std::collections::HashMap;
use std::io::{self, Read};

#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub id: u64,
    pub tokens: Vec<u32>,
    pub checksum: u32,
}

impl Block {
    pub fn new(id: u64, tokens: Vec<u32>) -> Self {
        let checksum = tokens.iter().fold(0u32, |acc, t| acc.wrapping_mul(31).wrapping_add(*t));
        Self { id, tokens, checksum }
    }
}

fn main() -> io::Result<()> {
    let mut input = String::new();
    io::stdin().read_to_string(&mut input)?;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for word in input.split_whitespace() {
        *counts.entry(word).or_insert(0) += 1;
    }
    println!("{} distinct words", counts.len());
    Ok(())
}

package main

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

type Server struct {
	addr    string
	timeout time.Duration
}

func (s *Server) Run(ctx context.Context) error {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Addr: s.addr, Handler: mux, ReadTimeout: s.timeout}
	go func() {
		<-ctx.Done()
		_ = srv.Shutdown(context.Background())
	}()
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		return fmt.Errorf("listen on %s: %w", s.addr, err)
	}
	return nil
}

#include <stdint.h>
#include <stdio.h>
#include <string.h>

static uint32_t crc32c(const uint8_t *data, size_t len) {
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < len; i++) {
        crc ^= data[i];
        for (int k = 0; k < 8; k++) {
            crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
        }
    }
    return ~crc;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s <text>\n", argv[0]);
        return 1;
    }
    printf("%08x\n", crc32c((const uint8_t *)argv[1], strlen(argv[1])));
    return 0;
}

SELECT u.id, u.name, COUNT(o.id) AS orders, SUM(o.total) AS revenue
FROM users AS u
LEFT JOIN orders AS o ON o.user_id = u.id
WHERE o.created_at >= '2024-01-01' AND u.active = TRUE
GROUP BY u.id, u.name
HAVING COUNT(o.id) > 5
ORDER BY revenue DESC
LIMIT 20;

CREATE TABLE IF NOT EXISTS blocks (
    key TEXT PRIMARY KEY,
    size_bytes INTEGER NOT NULL,
    last_used_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/.."
for f in models/*/config.json; do
  echo "checking $f"
  jq -e '.model_type' "$f" > /dev/null || { echo "missing model_type in $f" >&2; exit 1; }
done
npm ci --ignore-scripts && npm run build && npm test

{
  "model_type": "qwen2",
  "hidden_size": 896,
  "num_hidden_layers": 24,
  "num_attention_heads": 14,
  "num_key_value_heads": 2,
  "intermediate_size": 4864,
  "rope_theta": 1000000.0,
  "rms_norm_eps": 1e-06,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "vocab_size": 151936
}

<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Cache dashboard</title>
  <style>
    body { font-family: sans-serif; margin: 0 auto; max-width: 960px; }
    .metric { display: flex; justify-content: space-between; padding: 8px 16px; }
  </style>
</head>
<body>
  <div class="metric"><span>Hit rate</span><span id="hit-rate">0%</span></div>
  <script src="/static/app.js"></script>
</body>
</html>

public final class Counter {
    private long value = 0L;

    public synchronized long increment() {
        return ++value;
    }

    @Override
    public String toString() {
        return "Counter{value=" + value + "}";
    }
}
`;

const GERMAN = `
Der Zwischenspeicher bewahrt die Schlüssel und Werte der Aufmerksamkeit für jede Anfrage auf, damit die
nächste Anfrage mit demselben Anfang nicht noch einmal dafür bezahlen muss. Größere Modelle brauchen
mehr Speicher, und der Arbeitsspeicher ist schnell voll. Ältere Blöcke wandern deshalb auf die Festplatte
und kommen zurück, wenn sie wieder gebraucht werden.

Es war einmal ein kleines Dorf am Rande eines großen Waldes. Im Winter lag der Schnee bis an die Fenster,
und die Kinder fuhren mit ihren Schlitten den Hügel hinunter. Die Großmutter erzählte am Abend Geschichten
von Füchsen, Bären und einer Eule, die jeden Weg durch den Wald kannte. Über dem Kamin hingen getrocknete
Kräuter, und aus der Küche duftete es nach Äpfeln, Zimt und frischem Brot.

Bitte beachten Sie: Die Straße zwischen Münster und Köln ist wegen Bauarbeiten bis Freitag gesperrt.
Fahrgäste werden gebeten, die Umleitung über Düsseldorf zu nutzen. Wir entschuldigen uns für die
Unannehmlichkeiten und danken für Ihr Verständnis. Weitere Informationen erhalten Sie am Schalter.

Häufige Fragen: Wie lange dauert die Lieferung? Normalerweise zwei bis drei Werktage. Kann ich die
Bestellung ändern? Ja, solange sie noch nicht verschickt wurde. Übernehmen Sie die Rücksendekosten? Für
beschädigte Ware selbstverständlich, sonst nur bei Bestellungen über fünfzig Euro.
`;

const FRENCH = `
Le cache conserve les clés et les valeurs de l'attention pour chaque requête, afin que la suivante, si
elle commence par les mêmes mots, n'ait pas à les recalculer. La mémoire vive se remplit vite : les blocs
les plus anciens sont déplacés vers le disque et reviennent lorsqu'on en a de nouveau besoin.

Il était une fois, dans une petite ville au bord de la mer, un boulanger qui se levait chaque matin avant
l'aube. Il pétrissait la pâte, allumait le four et préparait des croissants, des baguettes et des
brioches. Les habitants disaient que son pain était le meilleur de toute la région, et les touristes
faisaient parfois une heure de route pour goûter ses éclairs au café.

Où se trouve la gare ? Continuez tout droit, puis tournez à gauche après l'église. C'est à cinq minutes à
pied. Le prochain train pour Lyon part à quatorze heures trente ; il faut acheter le billet au guichet ou
sur l'application. N'oubliez pas de composter votre billet avant de monter.

Nous avons été très heureux de vous accueillir. Votre séjour s'est-il bien passé ? Qu'avez-vous pensé du
dîner ? Nous espérons vous revoir bientôt et vous souhaitons une excellente journée. À bientôt, et merci
encore pour votre confiance !
`;

const SPANISH = `
La caché guarda las claves y los valores de la atención para que la próxima petición no tenga que
calcularlos de nuevo. ¿Cuánto tiempo se ahorra? Depende del tamaño del modelo y de la longitud del
contexto, pero a menudo la primera respuesta llega diez veces más rápido. ¡Es una mejora enorme! Mañana
por la mañana iremos al mercado a comprar pan, queso, aceitunas y una botella de vino tinto.
`;

const CHINESE = `
缓存会保存每个请求的注意力键和值，这样下一个以相同内容开头的请求就不必重新计算。内存很快就会被占满，
所以较旧的数据块会被移到固态硬盘上，等需要的时候再读回来。从硬盘读取比重新计算快得多，但前提是加载路径
要尽量减少复制和内存分配。

今天天气很好，阳光明媚，我们决定去公园散步。湖边有很多人在钓鱼，孩子们在草地上放风筝，老人们在树下
下棋、喝茶、聊天。中午我们在附近的小饭馆吃了饺子和面条，味道非常好。下午回家的路上还买了一些水果。

学习一门新的编程语言需要时间和耐心。首先要了解它的基本语法，然后通过编写小程序来练习。遇到问题时，
可以查阅官方文档，也可以向有经验的同事请教。最重要的是坚持每天写代码，并且认真阅读别人写的代码。

请注意：系统将于本周六凌晨两点至四点进行维护，届时服务可能暂时无法使用。给您带来的不便，敬请谅解。
如有任何问题，请联系我们的客服人员，我们会尽快为您解决。谢谢您的理解与支持！

中国的四大发明是造纸术、指南针、火药和印刷术。长城、故宫和兵马俑是世界著名的名胜古迹。春节是中国
最重要的传统节日，家家户户都会贴春联、吃年夜饭、放鞭炮，一起迎接新的一年。
`;

const JAPANESE = `
キャッシュは、各リクエストのアテンションのキーと値を保存します。同じ内容で始まる次のリクエストは、
それらを再計算する必要がありません。メモリはすぐにいっぱいになるので、古いブロックはディスクに移され、
必要になったときに読み戻されます。

昨日は友達と一緒に京都へ行きました。朝早く東京駅から新幹線に乗って、お昼前に着きました。お寺や神社を
たくさん見て、抹茶のアイスクリームを食べました。夜は旅館に泊まって、温泉に入りました。とても楽しい
一日でした。また行きたいと思います。

すみません、駅はどこですか。この道をまっすぐ行って、二つ目の信号を右に曲がってください。五分ぐらいで
着きますよ。ありがとうございます。どういたしまして。お気をつけて。

プログラムを書くときは、まず小さく動くものを作って、少しずつ機能を追加するのがいいです。テストを
書いておけば、変更したときに壊れていないかすぐに確認できます。エラーメッセージは、何が起きたのか、
どうすればいいのかを分かりやすく書きましょう。
`;

const KOREAN_AND_OTHERS = `
캐시는 각 요청의 어텐션 키와 값을 저장하여 같은 내용으로 시작하는 다음 요청이 다시 계산하지 않도록
합니다. 오늘 날씨가 정말 좋네요. 같이 산책하러 갈까요? 감사합니다. 안녕히 가세요.
Кэш хранит ключи и значения внимания, чтобы следующий запрос не вычислял их заново. Спасибо, до встречи!
Η μνήμη γεμίζει γρήγορα. Ευχαριστώ πολύ. Καλημέρα!
Önbellek, dikkat anahtarlarını ve değerlerini saklar. Teşekkür ederim. Görüşürüz!
Pamięć podręczna przechowuje klucze i wartości uwagi. Dziękuję bardzo. Do zobaczenia!
`;

const EMOJI = `
Great job! 🎉🎉 Thanks for the fix 👍 The build is green ✅ and the tests pass 🚀
I love this ❤️ so much 😍😂🤣 see you tomorrow 👋 have a nice day ☀️🌈
Weather: ☀️ 🌤️ ⛅ 🌧️ ⛈️ ❄️ 🌪️ — Food: 🍕 🍔 🍣 🍜 🍰 ☕ 🍺 🍷
Family: 👨‍👩‍👧‍👦 👩‍💻 👨‍🍳 🧑‍🚀 — Flags: 🇩🇪 🇫🇷 🇯🇵 🇨🇳 🇺🇸 🇬🇧 — Hands: 👍🏽 👏🏻 🙏🏿 ✌️
Warning ⚠️ the disk is almost full 💾 🔥 please clean up 🧹 before Friday 📅
😀 😃 😄 😁 😆 😅 😂 🤣 😊 😇 🙂 🙃 😉 😌 😍 🥰 😘 😋 😎 🤓 🤔 🤨 😐 😴 🤯 🥳
`;

const DIALOGUE = `
system: You are a helpful assistant. Answer briefly and cite the documentation when you can.
user: Hi! Can you explain what a key-value cache is, in simple terms?
assistant: Sure. When a language model reads a prompt, every layer computes keys and values for every
token. Generating the next token needs all of them again. Instead of recomputing, the model keeps them in
memory: that is the key-value cache. It grows by one entry per layer for each new token.
user: Why does it need so much memory?
assistant: Because it stores two vectors per token, per layer, per key-value head. For a model with
thirty-two layers, eight heads of dimension one hundred and twenty-eight, and half-precision numbers,
that is one hundred and twenty-eight kilobytes for each token of context.
user: Thank you, that makes sense. One more question: what is prefix caching?
assistant: Prefix caching reuses the cache of an earlier request whose beginning matches the new one,
for example the same system prompt or the same document. Only the part after the shared prefix has to
be computed. You're welcome, and feel free to ask if anything else is unclear!
user: Could you write me a short poem about autumn?
assistant: Of course. Leaves of amber, rust and gold / drift down where summer's stories told; / the
evening light grows soft and thin, / and kitchen windows glow within.
user: Translate "good morning" into five languages, please.
assistant: German: Guten Morgen. French: Bonjour. Spanish: Buenos días. Italian: Buongiorno.
Japanese: おはようございます.
user: What's 17 multiplied by 23?
assistant: 17 × 23 = 391. You can check it as 17 × 20 = 340 plus 17 × 3 = 51, and 340 + 51 = 391.
`;

const TECHNICAL = `
A transformer layer has two parts. The attention block lets every position look at earlier positions:
queries are compared with keys, the scores are scaled by the square root of the head dimension, masked so
that no token can see the future, normalised with a softmax, and used to average the values. The
feed-forward block then transforms each position independently, usually with a gated linear unit such as
SwiGLU. Residual connections add the input of each block to its output, and a normalisation layer,
nowadays mostly RMSNorm, keeps the activations in a stable range.

Rotary position embeddings rotate pairs of dimensions of the queries and keys by an angle that depends on
the position. The dot product of a rotated query and a rotated key then depends only on the distance
between the two positions. Scaling methods stretch these rotations so that a model trained on a short
context can be used on a longer one, at the cost of some precision.

Grouped-query attention shares each key-value head between several query heads. It reduces the size of
the cache by the grouping factor, which matters much more than the small loss in quality. Quantisation
stores weights, and sometimes the cache itself, with fewer bits: eight-bit and four-bit formats keep a
scale and an offset for every group of sixty-four or one hundred and twenty-eight values.

During prefill the model processes the whole prompt at once, and the speed is limited by arithmetic.
During decoding it produces one token at a time, and the speed is limited by how fast the weights can be
read from memory. Batching several requests together makes decoding more efficient, because the same
weights serve many sequences in a single pass. Chunked prefill splits a long prompt into pieces so that
other requests can keep decoding in between.

Sampling turns the output distribution into a token. Greedy decoding always takes the most likely token.
Temperature sharpens or flattens the distribution; top-k keeps only the k most likely tokens; top-p keeps
the smallest set whose probabilities add up to p. A fixed random seed makes sampling reproducible, which
is essential for tests and for debugging.

Observability answers three questions: is it up, is it fast, and is it correct? Metrics count requests,
errors and latencies; traces show where the time of a single request went; logs record what happened and
why. Histograms need buckets that match the latencies you care about, and labels must have a bounded set
of values, otherwise the monitoring system runs out of memory before the service does.

Reliability is mostly about the unhappy paths. What happens when the disk is full, when a file is
truncated by a crash, when a client disconnects in the middle of a stream, or when a dependency is slow?
Every one of these cases should have a test, a clear error message and a counter, so that an operator can
see it happening and knows what to do. Retries need backoff with jitter and a budget; timeouts need to be
shorter than the caller's deadline; and shutdown should drain work instead of dropping it.
`;

const STORY = `
The lighthouse keeper had not spoken to anyone for eleven days when the storm arrived. It came from the
south-west, as the old charts said the worst ones always did, and by midnight the waves were breaking over
the rocks below the tower with a sound like distant artillery. He climbed the spiral staircase every hour
to trim the wick and wipe the salt from the lens, counting the steps out of habit: one hundred and
fourteen, always one hundred and fourteen.

Shortly before dawn he saw a light where no light should be. It flickered, vanished, and returned, low
on the water and much too close to the reef. He grabbed his coat, his lantern and the coil of rope that
hung by the door, and ran down to the landing. The rain was so heavy that he could barely see his own
hands. Somewhere out there a small voice was shouting, and the wind tore the words apart before they
reached him.

Afterwards, when the fishing boat had been pulled into the harbour and the two exhausted brothers were
wrapped in blankets by the stove, nobody could quite explain how he had managed it. The keeper himself
said very little. He made tea, put more wood on the fire, and went back up the stairs to the lamp, because
the night was not over yet and somebody else might still be out at sea.

Years later, the younger of the brothers became a teacher in the town. Every autumn he took his pupils
to the lighthouse, which by then ran automatically, and told them the story of the storm. The children
always asked the same question: was he not afraid? And the teacher always gave the same answer: of
course he was, but he went anyway, and that is what courage means.
`;

const REVIEWS = `
★★★★★ Excellent headphones. The sound is clear, the battery lasts all week and they fold into a tiny case.
★★★★☆ Good value for money, although the instructions could be clearer and the cable is a bit short.
★★☆☆☆ Arrived late and the box was damaged. Customer service replied quickly and sent a replacement.
★★★★★ My kids love this board game! Easy to learn, hard to master, and every round is different.
★☆☆☆☆ Stopped working after two weeks. Very disappointed; I would not recommend it to anyone.
★★★☆☆ Decent coffee machine, but it is louder than expected and the milk frother is hard to clean.
Terms and conditions: the warranty covers manufacturing defects for a period of twenty-four months
from the date of purchase. It does not cover damage caused by accidents, misuse, unauthorised repairs or
normal wear and tear. To make a claim, please contact us with your order number and a description of
the problem. Refunds are issued to the original payment method within fourteen business days.
`;

const MORE_CODE = String.raw`
import Foundation

struct Message: Codable, Equatable {
    let role: String
    let content: String
}

func tokenize(_ text: String) -> [String] {
    return text.split(separator: " ").map { String($0) }
}

data class Request(val id: String, val prompt: String, val maxTokens: Int = 256)

fun List<Request>.totalPromptLength(): Int = sumOf { it.prompt.length }

class Cache
  attr_reader :capacity

  def initialize(capacity)
    @capacity = capacity
    @store = {}
  end

  def fetch(key)
    return @store[key] if @store.key?(key)
    value = yield
    @store.shift if @store.size >= @capacity
    @store[key] = value
  end
end

<?php
function greet(string $name): string {
    return "Hello, " . htmlspecialchars($name) . "!";
}
echo greet($_GET['name'] ?? 'world');

local function fib(n)
  if n < 2 then return n end
  return fib(n - 1) + fib(n - 2)
end
print(fib(20))

module Main where

import qualified Data.Map.Strict as Map

wordFreq :: String -> Map.Map String Int
wordFreq = foldr (\w -> Map.insertWith (+) w 1) Map.empty . words

main :: IO ()
main = interact $ unlines . map show . Map.toList . wordFreq

apiVersion: apps/v1
kind: Deployment
metadata:
  name: kvpark
  labels:
    app: kvpark
spec:
  replicas: 1
  selector:
    matchLabels:
      app: kvpark
  template:
    spec:
      containers:
        - name: server
          image: kvpark:latest
          ports:
            - containerPort: 50051
          resources:
            limits:
              memory: 8Gi
              cpu: "2"
          readinessProbe:
            grpc:
              port: 50051

FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts
COPY . .
RUN npm run build

.PHONY: all clean test
CFLAGS ?= -O2 -Wall -Wextra -std=c11
all: store
store: store.o checksum.o
	$(CC) $(CFLAGS) -o $@ $^
clean:
	rm -f *.o store

const re = /^(?<year>\d{4})-(?<month>\d{2})-(?<day>\d{2})$/u;
const match = re.exec("2025-11-30");
if (match?.groups) console.log(match.groups.year, match.groups.month);

async function* stream(signal: AbortSignal): AsyncGenerator<string> {
  let n = 0;
  while (!signal.aborted) {
    yield "token-" + n++;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

try {
  await Promise.all(tasks.map((t) => t.run()));
} catch (err) {
  logger.error({ err }, "task failed");
  process.exitCode = 1;
} finally {
  await pool.close();
}

template <typename T>
class RingBuffer {
 public:
  explicit RingBuffer(std::size_t capacity) : data_(capacity) {}
  bool push(const T& value) {
    if (size_ == data_.size()) return false;
    data_[(head_ + size_++) % data_.size()] = value;
    return true;
  }
 private:
  std::vector<T> data_;
  std::size_t head_ = 0;
  std::size_t size_ = 0;
};

import numpy as np
import torch

def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    variance = x.pow(2).mean(-1, keepdim=True)
    return x * torch.rsqrt(variance + eps) * weight

x = np.arange(12, dtype=np.float32).reshape(3, 4)
print(x.T @ x, x.sum(axis=0), x.mean())
`;

const ROMANCE_AND_GERMANIC = `
Italiano: La memoria si riempie rapidamente, quindi i blocchi più vecchi vengono spostati sul disco.
Ieri sera siamo andati in una piccola trattoria vicino al porto: abbiamo mangiato spaghetti alle vongole,
un'insalata di pomodori e basilico e, per finire, un tiramisù delizioso. Il cameriere era gentilissimo.
Português: O cache guarda as chaves e os valores da atenção para que o próximo pedido não precise de os
calcular outra vez. Amanhã vamos à praia com os nossos amigos; depois almoçamos peixe grelhado e à tarde
visitamos o castelo. Obrigado pela ajuda, até à próxima!
Nederlands: De cache bewaart de sleutels en waarden van de aandacht, zodat het volgende verzoek ze niet
opnieuw hoeft te berekenen. Morgen gaan we fietsen langs de grachten en daarna drinken we koffie met
appeltaart. Hartelijk bedankt en tot ziens!
Svenska: Cachen sparar nycklar och värden så att nästa begäran går snabbare. Tack så mycket, vi ses i
morgon! Dansk: Tak for hjælpen, vi ses på fredag. Norsk: Været er fint i dag, så vi går en tur i skogen.
Deutsch, noch einmal: Die Verwaltung des Arbeitsspeichers ist schwierig, weil die Garbage Collection
nicht weiß, wie groß die nativen Puffer sind. Deshalb messen wir den tatsächlichen Verbrauch und räumen
ausdrücklich auf, sobald eine Schwelle überschritten wird. Änderungen an diesem Verhalten müssen
gründlich getestet werden, sonst läuft der Dienst nach einigen Stunden über.
Français, encore : la première requête est plus lente parce que le cache est vide ; les suivantes
profitent des blocs déjà calculés. Les mesures ont été effectuées sur une machine à deux cœurs, sans carte
graphique, avec un disque partagé dont les performances varient d'un jour à l'autre.
Español, otra vez: el servidor responde a las comprobaciones de salud incluso durante un cálculo largo,
porque el modelo se ejecuta en otro hilo. Si el motor falla, las peticiones en curso reciben un error que
se puede reintentar y el servicio vuelve a estar disponible en pocos segundos.
`;

const OTHER_SCRIPTS = `
Русский: Вчера мы гуляли по набережной, пили горячий чай и смотрели на корабли. Погода была холодной, но
солнечной. Программа работает быстрее, если данные уже находятся в памяти. Пожалуйста, проверьте
настройки и перезапустите сервер. Большое спасибо за помощь!
Українська: Дякую за допомогу. Сьогодні гарна погода, тому ми підемо гуляти в парк.
العربية: شكرا جزيلا على مساعدتك. الطقس جميل اليوم، وسنذهب إلى الحديقة بعد الظهر. الذاكرة تمتلئ بسرعة.
עברית: תודה רבה על העזרה. מזג האוויר יפה היום ואנחנו הולכים לים.
हिन्दी: आपकी मदद के लिए बहुत धन्यवाद। आज मौसम बहुत अच्छा है, इसलिए हम पार्क में घूमने जाएंगे।
ไทย: ขอบคุณมากสำหรับความช่วยเหลือ วันนี้อากาศดีมาก
Tiếng Việt: Cảm ơn bạn rất nhiều. Hôm nay trời đẹp, chúng tôi sẽ đi dạo trong công viên.
Ελληνικά: Η προσωρινή μνήμη αποθηκεύει τα κλειδιά και τις τιμές της προσοχής για κάθε αίτημα.
한국어: 어제는 친구들과 함께 바닷가에 가서 회를 먹고 산책을 했습니다. 프로그램을 작성할 때는 작은 것부터
시작해서 조금씩 기능을 추가하는 것이 좋습니다. 질문이 있으면 언제든지 물어보세요. 내일 다시 만나요!
`;

const MORE_CHINESE = `
人工智能正在改变我们的生活和工作方式。大型语言模型可以回答问题、翻译文章、编写代码，还能帮助人们整理资料
和总结会议内容。不过，这些模型也会犯错误，有时会编造并不存在的事实。因此，在重要的场合使用它们时，
仍然需要人工检查和核实。

服务器收到请求以后，首先检查输入是否合法，然后把文本转换成词元，再交给模型进行计算。如果前面的一部分
内容已经在缓存中，就可以直接读取，不需要重新计算。这样既节省了时间，也降低了电费和硬件成本。

我的家乡在南方的一个小城市，那里四季分明，春天开满了桃花，夏天可以在河里游泳，秋天满山都是红叶，冬天
偶尔会下一场小雪。每年过年的时候，全家人都会回到老房子里，一起包饺子、看电视、聊天，一直到深夜。

为了保证数据的安全，每个数据块在写入磁盘之前都会计算校验和，读取的时候再检查一遍。如果发现数据损坏，
系统会丢弃这个块，并且记录一条错误日志，然后重新计算。这样即使机器突然断电，也不会返回错误的结果。

北京、上海、广州、深圳、杭州、成都、西安、南京、武汉、重庆都是中国的大城市。黄河和长江是中国最长的两条
河流。熊猫生活在四川的山区，主要吃竹子。
`;

const MORE_JAPANESE = `
人工知能は私たちの生活や仕事のやり方を変えつつあります。大規模言語モデルは質問に答えたり、文章を翻訳したり、
プログラムを書いたりすることができます。しかし、間違えることもあるので、大切な場面では人が確認する必要が
あります。

サーバーはリクエストを受け取ると、まず入力が正しいかどうかを確認し、テキストをトークンに変換してから
モデルに渡します。前の部分がすでにキャッシュにあれば、計算し直さずにそのまま読み込むことができます。

日本には四つの季節があります。春には桜が咲き、夏には花火大会やお祭りがあり、秋には紅葉がきれいで、
冬には雪が降ります。東京、大阪、名古屋、福岡、札幌、横浜、神戸などの大きな都市があります。
私は毎朝七時に起きて、コーヒーを飲みながらニュースを読みます。それから電車で会社に行きます。
週末は図書館で本を借りたり、公園でジョギングをしたり、友達と映画を見に行ったりします。

データを書き込む前にチェックサムを計算し、読み込むときにもう一度確認します。もしデータが壊れていたら、
そのブロックを捨てて、エラーを記録し、もう一度計算します。
`;

const GLOSSARY = `
Glossary. Abstraction: hiding details behind a simpler interface. Allocation: reserving memory for an
object. Asynchronous: not waiting for an operation to finish before continuing. Backpressure: slowing a
producer down when the consumer cannot keep up. Benchmark: a repeatable measurement of performance.
Checksum: a short value computed from data to detect corruption. Concurrency: several tasks making
progress in overlapping periods. Deadline: the point in time after which a result is no longer useful.
Determinism: the same inputs always give the same outputs. Eviction: removing an entry to make room for
another. Fingerprint: a digest that identifies a specific artefact. Idempotent: safe to repeat without
changing the result. Latency: the time between a request and its response. Throughput: the amount of
work completed per unit of time. Serialisation: turning an object into bytes. Invariant: a condition that
must always hold. Quantile: the value below which a given fraction of observations falls. Embedding: a
vector that represents a token. Vocabulary: the set of tokens a model knows. Gradient: the direction in
which a function increases fastest. Regularisation: techniques that reduce overfitting. Inference: using
a trained model to make predictions. Tensor: a multi-dimensional array of numbers. Kernel: a small
function that runs on many elements in parallel. Scheduler: the component that decides what runs next.
Animals: cat, dog, horse, rabbit, squirrel, elephant, giraffe, dolphin, penguin, owl, eagle, butterfly,
tortoise, kangaroo, octopus. Fruit: apple, banana, cherry, grape, lemon, mango, orange, peach, pear,
pineapple, plum, raspberry, strawberry, watermelon. Colours: red, orange, yellow, green, blue, indigo,
violet, black, white, grey, brown, pink, purple, turquoise, crimson. Countries: Argentina, Australia,
Brazil, Canada, Egypt, Finland, Germany, India, Indonesia, Japan, Kenya, Mexico, Norway, Portugal,
Switzerland, Thailand, Vietnam. Professions: doctor, engineer, farmer, journalist, lawyer, musician,
nurse, pilot, plumber, scientist, carpenter, photographer, librarian, electrician, architect.
Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday. January, February, March, April, May,
June, July, August, September, October, November, December. Spring, summer, autumn, winter.
`;

const CJK_EXTRA = `
春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。床前明月光，疑是地上霜。举头望明月，低头思故乡。
白日依山尽，黄河入海流。欲穷千里目，更上一层楼。
图书馆周末开放时间为上午九点到下午五点，借书需要带身份证。新来的同学请先到前台办理借书证。
这家餐厅的招牌菜是红烧肉、清蒸鱼和麻婆豆腐，价格实惠，服务热情，周末经常需要排队。
软件测试包括单元测试、集成测试和端到端测试。每次提交代码之前，都应该运行全部测试，确保没有引入新的问题。
古池や蛙飛び込む水の音。柿食へば鐘が鳴るなり法隆寺。
この店のおすすめはラーメンと餃子です。値段も安くて、店員さんも親切なので、いつも混んでいます。
新しいバージョンでは、起動時間が半分になり、メモリの使用量も三割ほど減りました。詳しくはリリースノートを
ご覧ください。ご不明な点がございましたら、お気軽にお問い合わせください。
오늘은 비가 와서 집에서 책을 읽고 음악을 들었습니다. 저녁에는 가족과 함께 김치찌개를 만들어 먹었습니다.
새 버전에서는 시작 시간이 절반으로 줄었고 메모리 사용량도 크게 감소했습니다.
`;

/** The training documents, in a fixed order. */
export const TRAINING_CORPUS: readonly string[] = [
  ENGLISH,
  DIALOGUE,
  TECHNICAL,
  STORY,
  REVIEWS,
  GLOSSARY,
  CODE,
  MORE_CODE,
  GERMAN,
  FRENCH,
  SPANISH,
  CHINESE,
  JAPANESE,
  KOREAN_AND_OTHERS,
  ROMANCE_AND_GERMANIC,
  OTHER_SCRIPTS,
  MORE_CHINESE,
  MORE_JAPANESE,
  CJK_EXTRA,
  EMOJI,
];
