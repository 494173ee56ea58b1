// The official openai Node SDK against llmhub's /v1: chat (plain and streaming), embeddings, legacy completions, and
// the Responses API (plain to a chat model, bridged; streaming to a model served on /responses, native).
// Run by generation/tests/test_clients.py with LLMHUB_BASE_URL and LLMHUB_API_KEY; prints one JSON object.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.LLMHUB_BASE_URL, apiKey: process.env.LLMHUB_API_KEY, maxRetries: 0 });
const messages = [{ role: "user", content: "hello from node" }];

const chat = await client.chat.completions.create({ model: "demo", messages });
const stream = await client.chat.completions.create({
  model: "demo", messages, stream: true, stream_options: { include_usage: true },
});
let streamed = "";
let streamUsage = null;
for await (const chunk of stream) {
  streamed += chunk.choices[0]?.delta?.content ?? "";
  streamUsage = chunk.usage ?? streamUsage;
}
const embeddings = await client.embeddings.create({ model: "demo-embed", input: ["hello from node", "again"] });
const completion = await client.completions.create({ model: "demo", prompt: "hello from node" });
const response = await client.responses.create({ model: "demo", input: "hello from node" });
const responseStream = await client.responses.create({ model: "demo-backup", input: "hello from node", stream: true });
let responseStreamed = "";
let responseUsage = null;
for await (const event of responseStream) {
  if (event.type === "response.output_text.delta") responseStreamed += event.delta;
  if (event.type === "response.completed") responseUsage = event.response.usage;
}
let refused = null;
try {
  await client.chat.completions.create({ model: "demo", messages, temperature: "hot" });
} catch (error) {
  refused = { status: error.status, param: error.param, requestId: error.requestID ?? error.headers?.get?.("x-request-id") };
}

console.log(JSON.stringify({
  chat: chat.choices[0].message.content,
  streamed,
  streamUsage,
  embeddingLengths: embeddings.data.map((item) => item.embedding.length),
  embeddingUsage: embeddings.usage,
  completion: completion.choices[0].text,
  completionObject: completion.object,
  response: response.output_text,
  responseUsage: response.usage,
  responseStreamed,
  responseStreamUsage: responseUsage,
  refused,
}));
