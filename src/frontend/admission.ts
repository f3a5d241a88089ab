import { KvparkError } from "../errors.js";

/** Bounds the number of Generate/PrefillStream calls in flight. */
export class Admission {
  active = 0;
  constructor(private readonly max: number) {}

  /** Admits a call or refuses it with RESOURCE_EXHAUSTED; the returned function lets it leave (once). */
  enter(): () => void {
    if (this.active >= this.max) {
      throw new KvparkError(
        "RESOURCE_EXHAUSTED",
        `server busy: ${this.max} generation requests in flight (--requests-max); retry later`,
      );
    }
    this.active++;
    let left = false;
    return () => {
      if (!left) this.active--;
      left = true;
    };
  }
}
