import type * as grpc from '@grpc/grpc-js';
import type { EnumTypeDefinition, MessageTypeDefinition } from '@grpc/proto-loader';

import type {
  CleanupRequest as _containerd_services_snapshots_v1_CleanupRequest,
  CleanupRequest__Output as _containerd_services_snapshots_v1_CleanupRequest__Output,
} from './containerd/services/snapshots/v1/CleanupRequest';
import type {
  CommitSnapshotRequest as _containerd_services_snapshots_v1_CommitSnapshotRequest,
  CommitSnapshotRequest__Output as _containerd_services_snapshots_v1_CommitSnapshotRequest__Output,
} from './containerd/services/snapshots/v1/CommitSnapshotRequest';
import type {
  Info as _containerd_services_snapshots_v1_Info,
  Info__Output as _containerd_services_snapshots_v1_Info__Output,
} from './containerd/services/snapshots/v1/Info';
import type {
  ListSnapshotsRequest as _containerd_services_snapshots_v1_ListSnapshotsRequest,
  ListSnapshotsRequest__Output as _containerd_services_snapshots_v1_ListSnapshotsRequest__Output,
} from './containerd/services/snapshots/v1/ListSnapshotsRequest';
import type {
  ListSnapshotsResponse as _containerd_services_snapshots_v1_ListSnapshotsResponse,
  ListSnapshotsResponse__Output as _containerd_services_snapshots_v1_ListSnapshotsResponse__Output,
} from './containerd/services/snapshots/v1/ListSnapshotsResponse';
import type {
  MountsRequest as _containerd_services_snapshots_v1_MountsRequest,
  MountsRequest__Output as _containerd_services_snapshots_v1_MountsRequest__Output,
} from './containerd/services/snapshots/v1/MountsRequest';
import type {
  MountsResponse as _containerd_services_snapshots_v1_MountsResponse,
  MountsResponse__Output as _containerd_services_snapshots_v1_MountsResponse__Output,
} from './containerd/services/snapshots/v1/MountsResponse';
import type {
  PrepareSnapshotRequest as _containerd_services_snapshots_v1_PrepareSnapshotRequest,
  PrepareSnapshotRequest__Output as _containerd_services_snapshots_v1_PrepareSnapshotRequest__Output,
} from './containerd/services/snapshots/v1/PrepareSnapshotRequest';
import type {
  PrepareSnapshotResponse as _containerd_services_snapshots_v1_PrepareSnapshotResponse,
  PrepareSnapshotResponse__Output as _containerd_services_snapshots_v1_PrepareSnapshotResponse__Output,
} from './containerd/services/snapshots/v1/PrepareSnapshotResponse';
import type {
  RemoveSnapshotRequest as _containerd_services_snapshots_v1_RemoveSnapshotRequest,
  RemoveSnapshotRequest__Output as _containerd_services_snapshots_v1_RemoveSnapshotRequest__Output,
} from './containerd/services/snapshots/v1/RemoveSnapshotRequest';
import type {
  SnapshotsClient as _containerd_services_snapshots_v1_SnapshotsClient,
  SnapshotsDefinition as _containerd_services_snapshots_v1_SnapshotsDefinition,
} from './containerd/services/snapshots/v1/Snapshots';
import type {
  StatSnapshotRequest as _containerd_services_snapshots_v1_StatSnapshotRequest,
  StatSnapshotRequest__Output as _containerd_services_snapshots_v1_StatSnapshotRequest__Output,
} from './containerd/services/snapshots/v1/StatSnapshotRequest';
import type {
  StatSnapshotResponse as _containerd_services_snapshots_v1_StatSnapshotResponse,
  StatSnapshotResponse__Output as _containerd_services_snapshots_v1_StatSnapshotResponse__Output,
} from './containerd/services/snapshots/v1/StatSnapshotResponse';
import type {
  UpdateSnapshotRequest as _containerd_services_snapshots_v1_UpdateSnapshotRequest,
  UpdateSnapshotRequest__Output as _containerd_services_snapshots_v1_UpdateSnapshotRequest__Output,
} from './containerd/services/snapshots/v1/UpdateSnapshotRequest';
import type {
  UpdateSnapshotResponse as _containerd_services_snapshots_v1_UpdateSnapshotResponse,
  UpdateSnapshotResponse__Output as _containerd_services_snapshots_v1_UpdateSnapshotResponse__Output,
} from './containerd/services/snapshots/v1/UpdateSnapshotResponse';
import type {
  UsageRequest as _containerd_services_snapshots_v1_UsageRequest,
  UsageRequest__Output as _containerd_services_snapshots_v1_UsageRequest__Output,
} from './containerd/services/snapshots/v1/UsageRequest';
import type {
  UsageResponse as _containerd_services_snapshots_v1_UsageResponse,
  UsageResponse__Output as _containerd_services_snapshots_v1_UsageResponse__Output,
} from './containerd/services/snapshots/v1/UsageResponse';
import type {
  ViewSnapshotRequest as _containerd_services_snapshots_v1_ViewSnapshotRequest,
  ViewSnapshotRequest__Output as _containerd_services_snapshots_v1_ViewSnapshotRequest__Output,
} from './containerd/services/snapshots/v1/ViewSnapshotRequest';
import type {
  ViewSnapshotResponse as _containerd_services_snapshots_v1_ViewSnapshotResponse,
  ViewSnapshotResponse__Output as _containerd_services_snapshots_v1_ViewSnapshotResponse__Output,
} from './containerd/services/snapshots/v1/ViewSnapshotResponse';
import type {
  Mount as _containerd_types_Mount,
  Mount__Output as _containerd_types_Mount__Output,
} from './containerd/types/Mount';
import type {
  Empty as _google_protobuf_Empty,
  Empty__Output as _google_protobuf_Empty__Output,
} from './google/protobuf/Empty';
import type {
  FieldMask as _google_protobuf_FieldMask,
  FieldMask__Output as _google_protobuf_FieldMask__Output,
} from './google/protobuf/FieldMask';
import type {
  Timestamp as _google_protobuf_Timestamp,
  Timestamp__Output as _google_protobuf_Timestamp__Output,
} from './google/protobuf/Timestamp';

type SubtypeConstructor<Constructor extends new (...args: any) => any, Subtype> = {
  new (...args: ConstructorParameters<Constructor>): Subtype;
};

export interface ProtoGrpcType {
  containerd: {
    services: {
      snapshots: {
        v1: {
          CleanupRequest: MessageTypeDefinition<
            _containerd_services_snapshots_v1_CleanupRequest,
            _containerd_services_snapshots_v1_CleanupRequest__Output
          >;
          CommitSnapshotRequest: MessageTypeDefinition<
            _containerd_services_snapshots_v1_CommitSnapshotRequest,
            _containerd_services_snapshots_v1_CommitSnapshotRequest__Output
          >;
          Info: MessageTypeDefinition<
            _containerd_services_snapshots_v1_Info,
            _containerd_services_snapshots_v1_Info__Output
          >;
          Kind: EnumTypeDefinition;
          ListSnapshotsRequest: MessageTypeDefinition<
            _containerd_services_snapshots_v1_ListSnapshotsRequest,
            _containerd_services_snapshots_v1_ListSnapshotsRequest__Output
          >;
          ListSnapshotsResponse: MessageTypeDefinition<
            _containerd_services_snapshots_v1_ListSnapshotsResponse,
            _containerd_services_snapshots_v1_ListSnapshotsResponse__Output
          >;
          MountsRequest: MessageTypeDefinition<
            _containerd_services_snapshots_v1_MountsRequest,
            _containerd_services_snapshots_v1_MountsRequest__Output
          >;
          MountsResponse: MessageTypeDefinition<
            _containerd_services_snapshots_v1_MountsResponse,
            _containerd_services_snapshots_v1_MountsResponse__Output
          >;
          PrepareSnapshotRequest: MessageTypeDefinition<
            _containerd_services_snapshots_v1_PrepareSnapshotRequest,
            _containerd_services_snapshots_v1_PrepareSnapshotRequest__Output
          >;
          PrepareSnapshotResponse: MessageTypeDefinition<
            _containerd_services_snapshots_v1_PrepareSnapshotResponse,
            _containerd_services_snapshots_v1_PrepareSnapshotResponse__Output
          >;
          RemoveSnapshotRequest: MessageTypeDefinition<
            _containerd_services_snapshots_v1_RemoveSnapshotRequest,
            _containerd_services_snapshots_v1_RemoveSnapshotRequest__Output
          >;
          Snapshots: SubtypeConstructor<typeof grpc.Client, _containerd_services_snapshots_v1_SnapshotsClient> & {
            service: _containerd_services_snapshots_v1_SnapshotsDefinition;
          };
          StatSnapshotRequest: MessageTypeDefinition<
            _containerd_services_snapshots_v1_StatSnapshotRequest,
            _containerd_services_snapshots_v1_StatSnapshotRequest__Output
          >;
          StatSnapshotResponse: MessageTypeDefinition<
            _containerd_services_snapshots_v1_StatSnapshotResponse,
            _containerd_services_snapshots_v1_StatSnapshotResponse__Output
          >;
          UpdateSnapshotRequest: MessageTypeDefinition<
            _containerd_services_snapshots_v1_UpdateSnapshotRequest,
            _containerd_services_snapshots_v1_UpdateSnapshotRequest__Output
          >;
          UpdateSnapshotResponse: MessageTypeDefinition<
            _containerd_services_snapshots_v1_UpdateSnapshotResponse,
            _containerd_services_snapshots_v1_UpdateSnapshotResponse__Output
          >;
          UsageRequest: MessageTypeDefinition<
            _containerd_services_snapshots_v1_UsageRequest,
            _containerd_services_snapshots_v1_UsageRequest__Output
          >;
          UsageResponse: MessageTypeDefinition<
            _containerd_services_snapshots_v1_UsageResponse,
            _containerd_services_snapshots_v1_UsageResponse__Output
          >;
          ViewSnapshotRequest: MessageTypeDefinition<
            _containerd_services_snapshots_v1_ViewSnapshotRequest,
            _containerd_services_snapshots_v1_ViewSnapshotRequest__Output
          >;
          ViewSnapshotResponse: MessageTypeDefinition<
            _containerd_services_snapshots_v1_ViewSnapshotResponse,
            _containerd_services_snapshots_v1_ViewSnapshotResponse__Output
          >;
        };
      };
    };
    types: {
      Mount: MessageTypeDefinition<_containerd_types_Mount, _containerd_types_Mount__Output>;
    };
  };
  google: {
    protobuf: {
      Empty: MessageTypeDefinition<_google_protobuf_Empty, _google_protobuf_Empty__Output>;
      FieldMask: MessageTypeDefinition<_google_protobuf_FieldMask, _google_protobuf_FieldMask__Output>;
      Timestamp: MessageTypeDefinition<_google_protobuf_Timestamp, _google_protobuf_Timestamp__Output>;
    };
  };
}
