import { openStore } from "../../src/store";
import type { StoreOptions } from "../../src/store";
import { describeStoreCompliance } from "./compliance";

describeStoreCompliance("native SSD store", (dir: string, options?: Partial<StoreOptions>) =>
  openStore(dir, { bytesMax: 64 << 20, fsync: "batch", segmentBytes: 1 << 20, ...options }),
);
