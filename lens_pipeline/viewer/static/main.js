// The viewer's page as the server serves it: answers from its HTTP API, the index followed live.
import { start } from "./app.js";

start({ live: true });
