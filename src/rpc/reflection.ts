import type { ConnectRouter } from "@connectrpc/connect";
import { createRegistry, toBinary, type DescFile, type Registry } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { ServerReflection as ReflectionV1 } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ReflectionV1alpha } from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";

// Both protocol versions carry the same messages; these are the shapes the handler needs.
type ReflectionRequest = {
  host: string;
  messageRequest:
    | {
        case: "fileByFilename" | "fileContainingSymbol" | "allExtensionNumbersOfType" | "listServices";
        value: string;
      }
    | { case: "fileContainingExtension"; value: { containingType: string; extensionNumber: number } }
    | { case: undefined; value?: undefined };
};

type ReflectionResponseInit = {
  validHost: string;
  originalRequest: ReflectionRequest;
  messageResponse:
    | { case: "fileDescriptorResponse"; value: { fileDescriptorProto: Uint8Array[] } }
    | { case: "listServicesResponse"; value: { service: { name: string }[] } }
    | { case: "allExtensionNumbersResponse"; value: { baseTypeName: string; extensionNumber: number[] } }
    | { case: "errorResponse"; value: { errorCode: number; errorMessage: string } };
};

const NOT_FOUND = 5;
const INVALID_ARGUMENT = 3;

/** Answers reflection requests from the descriptors protobuf-es embeds in the generated code. */
export class ReflectionIndex {
  private readonly registry: Registry;
  private readonly files = new Map<string, DescFile>();

  constructor(
    files: DescFile[],
    private readonly serviceNames: string[],
  ) {
    this.registry = createRegistry(...files);
    const add = (f: DescFile) => {
      this.files.set(f.proto.name, f);
      f.dependencies.forEach(add);
    };
    files.forEach(add);
  }

  /** The file and every file it imports, dependencies first, as serialized FileDescriptorProtos. */
  private withDependencies(file: DescFile): Uint8Array[] {
    const out: DescFile[] = [];
    const visit = (f: DescFile) => {
      if (out.includes(f)) return;
      f.dependencies.forEach(visit);
      out.push(f);
    };
    visit(file);
    return out.map((f) => toBinary(FileDescriptorProtoSchema, f.proto));
  }

  private fileOfSymbol(symbol: string): DescFile | undefined {
    const found = this.registry.get(symbol);
    if (found) return found.file;
    // A method or field name: look up its parent.
    const parent = symbol.slice(0, Math.max(0, symbol.lastIndexOf(".")));
    const owner = parent ? this.registry.get(parent) : undefined;
    if (owner?.kind === "service" && owner.methods.some((m) => `${parent}.${m.name}` === symbol))
      return owner.file;
    if (owner?.kind === "message" && owner.fields.some((f) => `${parent}.${f.name}` === symbol))
      return owner.file;
    return undefined;
  }

  answer(req: ReflectionRequest): ReflectionResponseInit {
    const base = { validHost: req.host, originalRequest: req };
    const error = (errorCode: number, errorMessage: string): ReflectionResponseInit => ({
      ...base,
      messageResponse: { case: "errorResponse", value: { errorCode, errorMessage } },
    });
    const files = (file: DescFile | undefined, what: string): ReflectionResponseInit =>
      file
        ? {
            ...base,
            messageResponse: {
              case: "fileDescriptorResponse",
              value: { fileDescriptorProto: this.withDependencies(file) },
            },
          }
        : error(NOT_FOUND, `${what} not found`);
    const m = req.messageRequest;
    switch (m.case) {
      case "listServices":
        return {
          ...base,
          messageResponse: {
            case: "listServicesResponse",
            value: { service: this.serviceNames.map((name) => ({ name })) },
          },
        };
      case "fileByFilename":
        return files(this.files.get(m.value), `file ${m.value}`);
      case "fileContainingSymbol":
        return files(this.fileOfSymbol(m.value), `symbol ${m.value}`);
      case "fileContainingExtension": {
        const msg = this.registry.getMessage(m.value.containingType);
        const ext = msg ? this.registry.getExtensionFor(msg, m.value.extensionNumber) : undefined;
        return files(ext?.file, `extension ${m.value.extensionNumber} of ${m.value.containingType}`);
      }
      case "allExtensionNumbersOfType": {
        const msg = this.registry.getMessage(m.value);
        if (!msg) return error(NOT_FOUND, `type ${m.value} not found`);
        // kvpark's contracts define no extensions.
        return {
          ...base,
          messageResponse: {
            case: "allExtensionNumbersResponse",
            value: { baseTypeName: m.value, extensionNumber: [] },
          },
        };
      }
      default:
        return error(INVALID_ARGUMENT, "empty reflection request");
    }
  }
}

/** grpc.reflection.v1 and v1alpha ServerReflection. */
export function registerReflection(router: ConnectRouter, index: ReflectionIndex): void {
  for (const service of [ReflectionV1, ReflectionV1alpha]) {
    router.service(service, {
      async *serverReflectionInfo(requests: AsyncIterable<unknown>) {
        for await (const req of requests) yield index.answer(req as ReflectionRequest) as never;
      },
    });
  }
}
